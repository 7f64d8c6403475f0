"""The language options of runplane.v1 are part of the contract for every generated client.

`buf breaking` compares everything else with the last release; v0.1.0 declared no
language options, so until a release carries them these values are pinned here:
changing one breaks every Go, Java, C#, PHP or Ruby client built from the proto.
"""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import FileDescriptor

from runplane.v1 import run_pb2, run_service_pb2

PINNED = {
    "go_package": "runplane.dev/gen/go/runplane/v1;runplanev1",
    "java_package": "dev.runplane.v1",
    "java_multiple_files": True,
    "csharp_namespace": "Runplane.V1",
    "php_namespace": "Runplane\\V1",
    "ruby_package": "Runplane::V1",
}


@pytest.mark.parametrize(
    "file", [run_pb2.DESCRIPTOR, run_service_pb2.DESCRIPTOR], ids=lambda file: file.name
)
def test_language_options_are_pinned(file: FileDescriptor) -> None:
    options = file.GetOptions()
    assert {name: getattr(options, name) for name in PINNED} == PINNED
