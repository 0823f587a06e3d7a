"""Whatever Butane the CLI accepts, the Ignition it prints validates against the JSON schema of
its spec version: property-based over every section we translate (hypothesis)."""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builds.pipeline.butane.ignition_schema import schema_problems
from builds.pipeline.butane.transpile import transpile
from builds.pipeline.vocabulary import BUTANE_IGNITION

names = st.text(alphabet="abcdefgh-_.", min_size=1, max_size=8)
paths = st.lists(names, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))
texts = st.text(max_size=30)
modes = st.integers(min_value=0, max_value=0o7777)
hashes = st.one_of(
    st.binary(min_size=32, max_size=32).map(lambda b: "sha256-" + b.hex()),
    st.binary(min_size=64, max_size=64).map(lambda b: "sha512-" + b.hex()),
)
urls = st.sampled_from(
    ["https://example.com/a", "http://example.com/b", "s3://bucket/key", "gs://b/o", "tftp://h/f"]
)


def optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


resources = st.one_of(
    optional(inline=texts, compression=st.sampled_from(["", "gzip"])),
    st.fixed_dictionaries(
        {"source": urls},
        optional={
            "verification": st.fixed_dictionaries({"hash": hashes}),
            "http_headers": st.lists(st.fixed_dictionaries({"name": names, "value": texts}), max_size=1),
        },
    ),
)
owner = optional(id=st.integers(min_value=0, max_value=65535))
files = st.fixed_dictionaries(
    {"path": paths},
    optional={"mode": modes, "contents": resources, "append": st.lists(resources, max_size=2), "user": owner},
)
directories = st.fixed_dictionaries({"path": paths}, optional={"mode": modes, "group": owner})
links = st.fixed_dictionaries({"path": paths, "target": paths}, optional={"hard": st.booleans()})
partitions = st.fixed_dictionaries(
    {"number": st.integers(min_value=1, max_value=8)},
    optional={"label": names, "size_mib": st.integers(0, 4096), "wipe_partition_entry": st.booleans()},
)
disks = st.fixed_dictionaries(
    {"device": paths},
    optional={"wipe_table": st.booleans(), "partitions": st.lists(partitions, max_size=2)},
)
filesystems = st.fixed_dictionaries(
    {"device": paths, "format": st.sampled_from(["ext4", "xfs", "btrfs", "vfat", "swap", "none"])},
    optional={
        "path": paths,
        "label": st.text(alphabet="abc", max_size=10),
        "wipe_filesystem": st.booleans(),
        "mount_options": st.lists(names, max_size=2),
        "with_mount_unit": st.booleans(),
    },
)
raid = st.fixed_dictionaries(
    {
        "name": names,
        "level": st.sampled_from(["raid1", "raid5", "raid10"]),
        "devices": st.lists(paths, min_size=1),
    },
    optional={"spares": st.integers(0, 2)},
)
luks = st.fixed_dictionaries(
    {"name": names, "device": paths},
    optional={"label": names, "wipe_volume": st.booleans(), "key_file": resources},
)
units = st.fixed_dictionaries(
    {"name": names.map(lambda n: n + ".service")},
    optional={
        "enabled": st.booleans(),
        "mask": st.booleans(),
        "contents": st.just("[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"),
        "dropins": st.lists(st.fixed_dictionaries({"name": names.map(lambda n: n + ".conf")}), max_size=1),
    },
)
users = st.fixed_dictionaries(
    {"name": names},
    optional={
        "uid": st.integers(1000, 60000),
        "ssh_authorized_keys": st.lists(texts, max_size=2),
        "groups": st.lists(names, max_size=2),
    },
)
documents = st.fixed_dictionaries(
    {"variant": st.just("flatcar"), "version": st.sampled_from(sorted(BUTANE_IGNITION))},
    optional={
        "storage": optional(
            files=st.lists(files, max_size=3),
            directories=st.lists(directories, max_size=2),
            links=st.lists(links, max_size=2),
            disks=st.lists(disks, max_size=2),
            filesystems=st.lists(filesystems, max_size=2),
            raid=st.lists(raid, max_size=1),
            luks=st.lists(luks, max_size=1),
        ),
        "systemd": optional(units=st.lists(units, max_size=3)),
        "passwd": optional(
            users=st.lists(users, max_size=2),
            groups=st.lists(st.fixed_dictionaries({"name": names}), max_size=2),
        ),
        "kernel_arguments": optional(
            should_exist=st.lists(names, max_size=2), should_not_exist=st.lists(names, max_size=2)
        ),
        "ignition": optional(
            config=optional(merge=st.lists(resources, max_size=1)),
            timeouts=optional(http_total=st.integers(0, 600)),
            proxy=optional(http_proxy=st.just("http://proxy:3128"), no_proxy=st.lists(names, max_size=2)),
        ),
    },
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_accepted_butane_gives_schema_valid_ignition(document: dict[str, Any]) -> None:
    result = transpile(yaml.safe_dump(document, sort_keys=False))
    if result.config is None:
        return  # refused like butane refuses it: nothing is printed, nothing to validate
    printed = json.loads(result.json())
    assert schema_problems(printed, BUTANE_IGNITION[document["version"]]) == []
