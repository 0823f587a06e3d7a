"""The composer wizard through Django's test client: URL state, hints, validation per step, build."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from builds.models import Build, Flavour
from tests.builds.catalog_fixtures import make_extension

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(cast):
    make_extension("docker", versions={"28.0.4": "approved", "27.5.1": "approved"}, conflicts=["containerd"])
    make_extension("docker-compose", versions={"v2.34.0": "approved"}, requires=[["docker"]])
    make_extension("containerd", versions={"2.1.9": "approved"}, conflicts=["docker"])
    make_extension("wasm3", versions={"0.5.0": "approved"}, arches=["x86-64"])
    return {"builder": cast.builder, "viewer": cast.viewer, "outsider": cast.outsider, "blue": cast.blue}


BASE = {"team": "blue", "name": "edge", "arch": "x86-64", "channel": "stable"}


def _query(location: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(location).query)


def test_step1_moves_on_with_the_choices_in_the_url(client, world):
    client.force_login(world["builder"])
    response = client.get("/compose/", {**BASE, "go": "next"})
    assert response.status_code == 302
    assert urlsplit(response["Location"]).path == "/compose/extensions/"
    assert _query(response["Location"]) == {k: [v] for k, v in BASE.items()}


def test_step1_shows_errors_next_to_fields(client, world):
    client.force_login(world["builder"])
    html = client.get("/compose/", {"team": "blue", "arch": "sparc", "go": "next"}).content.decode()
    assert 'id="id_name_error"' in html
    assert 'id="id_arch_error"' in html


def test_step1_refuses_a_butane_spec_the_channel_cannot_read(client, world):
    client.force_login(world["builder"])
    asked = {**BASE, "channel": "lts", "butane": "1.1.0", "go": "next"}
    html = client.get("/compose/", asked).content.decode()
    assert 'id="id_butane_error"' in html
    assert "Flatcar lts reads Butane 1.0.0 at most" in html
    # An older spec than the channel's newest is a deliberate choice, kept into the flavour.
    review = client.get("/compose/review/", {**BASE, "butane": "1.0.0", "x_docker": "28.0.4"})
    assert review.context["choices"].options.butane_version == "1.0.0"
    assert review.context["choices"].options.channel == "stable"


def test_viewer_cannot_compose(client, world):
    client.force_login(world["viewer"])
    assert client.get("/compose/").status_code == 403


def test_extensions_step_offers_only_what_fits_the_arch_newest_first(client, world):
    client.force_login(world["builder"])
    html = client.get("/compose/extensions/", {**BASE, "arch": "arm64"}).content.decode()
    assert 'name="x_docker"' in html and 'name="x_wasm3"' not in html
    assert html.index('value="28.0.4"') < html.index('value="27.5.1"')


def test_picking_compose_offers_docker_as_a_link(client, world):
    client.force_login(world["builder"])
    response = client.get("/compose/extensions/", {**BASE, "x_docker-compose": "v2.34.0"})
    hint = response.context["hints"][0]
    assert hint.text == "docker-compose requires docker."
    label, url = hint.fixes[0]
    assert label == "Add docker 28.0.4"
    assert _query(url)["x_docker"] == ["28.0.4"] and _query(url)["x_docker-compose"] == ["v2.34.0"]
    # Following the link, the requirement is met.
    assert not [h for h in client.get(url).context["hints"] if h.kind == "requires"]


def test_next_refuses_a_missing_requirement_and_explains_a_conflict(client, world):
    client.force_login(world["builder"])
    missing = client.get("/compose/extensions/", {**BASE, "x_docker-compose": "v2.34.0", "go": "next"})
    assert missing.status_code == 200
    assert "docker-compose requires docker; add it to the flavour." in missing.content.decode()
    clash = client.get(
        "/compose/extensions/", {**BASE, "x_docker": "28.0.4", "x_containerd": "2.1.9", "go": "next"}
    )
    html = clash.content.decode()
    assert clash.status_code == 200
    assert "containerd and docker conflict" in html
    assert "install the same files" in html


def test_options_step_validates_the_fragment_and_keys_next_to_fields(client, world):
    client.force_login(world["builder"])
    params = {**BASE, "x_docker": "28.0.4", "o": "1", "updates": "on", "signed": "on", "action": "refresh"}
    bad_key = client.get("/compose/options/", {**params, "ssh": "not a key", "go": "next"}).content.decode()
    assert 'id="id_ssh_error"' in bad_key and "Not an OpenSSH public key" in bad_key
    bad_fragment = client.get(
        "/compose/options/",
        {
            **params,
            "fragment": "variant: flatcar\nversion: 1.1.0\nstorage:\n  files:\n    - path: relative\n",
            "go": "next",
        },
    )
    assert bad_fragment.status_code == 200
    assert 'id="id_fragment_error"' in bad_fragment.content.decode()
    good = client.get("/compose/options/", {**params, "hostname": "node-1", "go": "next"})
    assert good.status_code == 302 and urlsplit(good["Location"]).path == "/compose/review/"


def test_fragment_check_endpoint(client, world):
    client.force_login(world["builder"])
    ok = client.post(
        "/compose/check-fragment/", {"fragment": "variant: flatcar\nversion: 1.1.0\n", "channel": "stable"}
    ).json()
    assert ok["problems"] == []
    bad = client.post("/compose/check-fragment/", {"fragment": "variant: flatcar\nversion: 9\n"}).json()
    assert bad["problems"]


def test_review_shows_the_id_and_build_stores_the_flavour(client, world, django_capture_on_commit_callbacks):
    client.force_login(world["builder"])
    params = {**BASE, "x_docker": "28.0.4", "x_docker-compose": "v2.34.0"}
    review = client.get("/compose/review/", params)
    flavour_id = review.context["flavour_id"]
    assert len(flavour_id) == 64 and flavour_id in review.content.decode()
    # Same choices, same ID: opening the shared link again gives the same flavour ID.
    assert client.get("/compose/review/", params).context["flavour_id"] == flavour_id

    from unittest import mock

    with mock.patch("portal.queueing.queue_task"):  # no broker in this test: the browser test runs a worker
        response = client.post("/compose/build/", params)
    flavour = Flavour.objects.get(pk=flavour_id)
    build = Build.objects.get(flavour=flavour)
    assert response["Location"] == f"/builds/{build.pk}/"
    page = client.get(response["Location"]).content.decode()
    assert "docker-compose" in page and 'id="build-progress"' in page


def test_the_chosen_channel_is_kept_by_the_flavour_and_reopened_by_its_edit_link(
    client, world, django_capture_on_commit_callbacks
):
    client.force_login(world["builder"])
    params = {**BASE, "channel": "beta", "x_docker": "28.0.4"}
    review = client.get("/compose/review/", params)
    assert review.context["choices"].options.channel == "beta"

    from unittest import mock

    with mock.patch("portal.queueing.queue_task"):  # no broker in this test
        client.post("/compose/build/", params)
    flavour = Flavour.objects.get(pk=review.context["flavour_id"])
    assert flavour.options["channel"] == "beta"
    page = client.get(f"/flavours/{flavour.pk}/").content.decode()
    assert "<dt>Flatcar channel</dt><dd>beta</dd>" in page
    # Editing it reopens the wizard on the same channel.
    start = page.index('href="/compose/?') + len('href="')
    link = page[start : page.index('"', start)].replace("&amp;", "&")
    assert "channel=beta" in link


def test_review_of_invalid_choices_links_back_to_the_step(client, world):
    client.force_login(world["builder"])
    html = client.get("/compose/review/", {**BASE, "x_docker-compose": "v2.34.0"}).content.decode()
    assert "docker-compose requires docker" in html
    assert "Fix it in step 2" in html
    assert '<button type="submit">Build</button>' not in html


def test_lts_channel_warns_about_an_extension_needing_newer_flatcar(client, world):
    from catalog.models import Extension

    Extension.objects.filter(name="docker").update(min_flatcar="3975.2.0")
    client.force_login(world["builder"])
    lts = client.get("/compose/extensions/", {**BASE, "channel": "lts", "x_docker": "28.0.4"}).context[
        "hints"
    ]
    assert any(h.kind == "needs" and "3975.2.0" in h.text for h in lts)
    stable = client.get("/compose/extensions/", {**BASE, "x_docker": "28.0.4"}).context["hints"]
    assert not any(h.kind == "needs" for h in stable)


def test_a_link_asking_for_something_not_offered_is_explained_not_dropped(client, world):
    client.force_login(world["builder"])
    params = {**BASE, "arch": "arm64", "x_wasm3": "0.5.0", "x_docker": "1.0-nope"}
    page = client.get("/compose/extensions/", params)
    html = page.content.decode()
    kinds = {h.text.split(" ")[0]: h.kind for h in page.context["hints"]}
    assert kinds == {"docker": "unavailable", "wasm3": "unavailable"}
    assert '<input type="hidden" name="x_wasm3" value="0.5.0">' in html
    assert '<option value="1.0-nope" selected>' in html
    refused = client.get("/compose/extensions/", {**params, "go": "next"})
    assert refused.status_code == 200
    assert "wasm3 does not support arm64" in refused.content.decode()


def _butane_shown(response) -> str:
    """The text of the page's ``<pre id="butane">``, as a user would copy it."""
    from html import unescape

    html = response.content.decode()
    start = html.index(">", html.index('<pre id="butane"')) + 1
    return unescape(html[start : html.index("</pre>", start)])


def test_review_previews_the_butane_before_any_build(client, world, settings):
    from catalog.models import Extension

    settings.PUBLIC_BASE_URL = "https://downloads.example.org/bakehouse/"
    Extension.objects.filter(name="docker").update(replaces_builtin=["docker"])
    client.force_login(world["builder"])
    params = {**BASE, "x_docker": "28.0.4", "x_docker-compose": "v2.34.0"}
    review = client.get("/compose/review/", params)
    butane = _butane_shown(review)
    html = review.content.decode()

    published = "https://downloads.example.org/bakehouse/extensions/"
    assert f"source: {published}docker/docker-28.0.4-x86-64.raw" in butane
    assert f"source: {published}docker-compose/docker-compose-v2.34.0-x86-64.raw" in butane
    # Updates are on by default: a transfer file per image, reading the published directory.
    assert "path: /etc/sysupdate.docker.d/" in butane
    assert "path: /etc/sysupdate.docker-compose.d/" in butane
    assert f"Path={published}docker-compose/" in butane
    # docker replaces Flatcar's bundled docker, which is masked.
    assert "- path: /etc/extensions/docker-flatcar.raw\n    target: /dev/null" in butane
    # Nothing is baked: no hash can pass for a real one, and the page says what a build fills in.
    assert "sha512-" not in butane
    assert butane.count("# sha512 filled in when the image is baked") == 2
    assert "# public keyring (import-pubring.gpg) filled in when the build signs" in butane
    assert 'id="butane-preview-notice"' in html
    assert "Image hash of docker, docker-compose:" in html
    assert 'data-copy-target="butane"' in html
    # Previewing bakes and stores nothing, and the same link shows the same text.
    assert not Build.objects.exists() and not Flavour.objects.exists()
    assert _butane_shown(client.get("/compose/review/", params)) == butane

    no_updates = _butane_shown(client.get("/compose/review/", {**params, "o": "1", "signed": "on"}))
    assert "/etc/sysupdate." not in no_updates
    assert f"source: {published}docker/docker-28.0.4-x86-64.raw" in no_updates


def test_review_shows_the_real_sha512_of_an_image_already_baked(client, world):
    import hashlib
    from unittest import mock

    from builds import director
    from builds.models import ImageArtifact

    client.force_login(world["builder"])
    params = {**BASE, "x_docker": "28.0.4", "x_docker-compose": "v2.34.0"}
    with mock.patch("portal.queueing.queue_task"):  # no broker here: the bake is recorded as it would be
        client.post("/compose/build/", params)
    build = Build.objects.get()
    docker_image = build.images.get(extension_version__extension__name="docker")
    plan = director.image_plan(build, docker_image)  # the key the bake task stores its image under
    sha512 = hashlib.sha512(b"the docker image bytes").hexdigest()
    ImageArtifact.objects.create(
        cache_key=plan.cache_key,
        extension_version=docker_image.extension_version,
        arch="x86-64",
        file_name=plan.file_name,
        sha256=hashlib.sha256(b"the docker image bytes").hexdigest(),
        sha512=sha512,
        size=22,
        key=f"images/{plan.cache_key}/{plan.file_name}",
        built_by=build,
    )

    review = client.get("/compose/review/", params)
    butane = _butane_shown(review)
    assert f"hash: sha512-{sha512}" in butane
    # docker-compose is not baked yet: its hash stays a placeholder, and the page says which is which.
    assert butane.count("# sha512 filled in when the image is baked") == 1
    html = review.content.decode()
    assert "Image hash of docker: real" in html
    assert "Image hash of docker-compose:" in html
