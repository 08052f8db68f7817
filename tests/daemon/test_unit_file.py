"""The shipped systemd unit keeps its safety settings and passes systemd-analyze."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "luckystack.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Parse a systemd unit into ``{section: {key: [values...]}}``.

    configparser cannot do this: systemd repeats keys, and an empty
    assignment (``Key=``) resets the list. Trailing backslashes continue lines.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a Key=value line: {line!r}"
        key, value = key.strip(), value.strip()
        if value == "":
            current[key] = [""]  # reset, and remember it was set empty
        else:
            current.setdefault(key, []).append(value)
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def _one(unit, key: str, section: str = "Service") -> str:
    values = unit[section].get(key)
    assert values is not None, f"{key}= missing from [{section}]"
    assert len(values) == 1, f"{key}= set {len(values)} times: {values}"
    return values[0]


def test_parser_handles_repeats_resets_and_continuations() -> None:
    parsed = parse_unit("[S]\nA=1\nA=2\nB=x\nB=\nC=a \\\n  b\n# A=3\n")
    assert parsed == {"S": {"A": ["1", "2"], "B": [""], "C": ["a b"]}}


def test_service_type_and_lifecycle(unit) -> None:
    assert _one(unit, "Type") == "notify"
    assert _one(unit, "NotifyAccess") == "main"
    assert _one(unit, "Restart") == "on-failure"
    assert int(_one(unit, "WatchdogSec")) > 0
    assert _one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"
    argv = _one(unit, "ExecStart").split()
    assert Path(argv[0]).name == "luckystack"
    assert argv[1] == "watch"


def test_filesystem_is_read_only_except_output(unit) -> None:
    assert _one(unit, "ProtectSystem") == "strict"
    assert _one(unit, "ProtectHome") in {"yes", "read-only", "tmpfs"}
    argv = _one(unit, "ExecStart").split()
    in_dir = argv[2]
    out_dir = argv[argv.index("--output") + 1]

    writable = unit["Service"]["ReadWritePaths"]
    assert writable == [out_dir], "the output folder must be the only ReadWritePaths="
    read_only = " ".join(unit["Service"]["ReadOnlyPaths"]).split()
    assert any(in_dir == p.lstrip("-") or in_dir.startswith(p.lstrip("-") + "/") for p in read_only)
    assert not out_dir.startswith(in_dir + "/") and not in_dir.startswith(out_dir + "/")


def test_privileges_and_isolation(unit) -> None:
    expected = {
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "PrivateNetwork": "yes",
        "RestrictAddressFamilies": "AF_UNIX",
        "SystemCallArchitectures": "native",
        "SystemCallFilter": "@system-service",
        "UMask": "0027",
    }
    for key, value in expected.items():
        assert _one(unit, key) == value, key
    assert _one(unit, "User") not in {"", "root", "0"}
    assert "DynamicUser" not in unit["Service"]
    # Only after it has been shown to run numpy + OpenCV (see the unit file).
    assert "MemoryDenyWriteExecute" not in unit["Service"]


def _verifiable_copy(tmp_path: Path) -> Path:
    """The unit with User=/Group= removed and ExecStart pointing at a real file."""
    script = Path(sys.executable).parent / "luckystack"
    program = script if script.is_file() else Path("/bin/true")
    lines = []
    for line in UNIT.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if key in {"User", "Group", "SupplementaryGroups"}:
            continue
        if key == "ExecStart":
            rest = line.split("=", 1)[1].split(None, 1)[1]
            line = f"ExecStart={program} {rest}"
        lines.append(line)
    copy = tmp_path / "luckystack.service"
    copy.write_text("\n".join(lines) + "\n")
    return copy


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    copy = _verifiable_copy(tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # verify prints warnings (unknown keys, bad values) without failing.
    assert "luckystack.service" not in result.stderr, result.stderr
