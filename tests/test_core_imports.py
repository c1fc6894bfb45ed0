"""slostream.core stays pure: no Kafka, Faust, Prometheus or HTTP imports."""

import ast
from pathlib import Path

import slostream.core

FORBIDDEN = {"faust", "aiokafka", "kafka", "prometheus_client", "aiohttp", "http", "urllib", "requests",
             "mode", "socket", "asyncio"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_modules_import_no_io_libraries():
    core = Path(slostream.core.__file__).parent
    files = sorted(core.glob("*.py"))
    assert len(files) >= 5
    offenders = {f.name: _imports(f) & FORBIDDEN for f in files if _imports(f) & FORBIDDEN}
    assert offenders == {}


def test_the_rule_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import faust\nfrom aiokafka import AIOKafkaConsumer\n")
    assert _imports(bad) & FORBIDDEN == {"faust", "aiokafka"}
