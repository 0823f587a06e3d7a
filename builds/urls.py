from django.urls import path

from builds import views

app_name = "builds"

urlpatterns: list = [
    # The token route first: "private/..." is never a published key (those start with
    # extensions/ or flavours/), so it cannot shadow one.
    path(
        "artifacts/private/<str:token>/<path:key>",
        views.artifact_download_private,
        name="artifact-download-private",
    ),
    path("artifacts/<path:key>", views.artifact_download, name="artifact-download"),
    # The composer: every step is a GET link carrying the whole state in its query.
    path("compose/", views.compose_target, name="compose-target"),
    path("compose/extensions/", views.compose_extensions, name="compose-extensions"),
    path("compose/options/", views.compose_options, name="compose-options"),
    path("compose/review/", views.compose_review, name="compose-review"),
    path("compose/build/", views.compose_build, name="compose-build"),
    path("compose/check-fragment/", views.compose_check_fragment, name="compose-check-fragment"),
    path("flavours/", views.flavour_list, name="flavour-list"),
    path("flavours/<str:flavour_id>/", views.flavour_detail, name="flavour-detail"),
    path("flavours/<str:flavour_id>/compare/", views.flavour_compare_page, name="flavour-compare"),
    path("flavours/<str:flavour_id>/build/", views.flavour_build, name="flavour-build"),
    path("flavours/<str:flavour_id>/rotate-token/", views.flavour_rotate_token, name="flavour-rotate-token"),
    path("builds/<uuid:build_id>/", views.build_detail, name="build-detail"),
    path("builds/<uuid:build_id>/cancel/", views.build_cancel, name="build-cancel"),
    path("builds/<uuid:build_id>/retry/", views.build_retry, name="build-retry"),
    path("teams/<slug:slug>/", views.team_detail, name="team-detail"),
]
