"""Crafted ``model.skops`` files: loading a model folder must never run code from it.

Each payload is planted in an otherwise genuine featlab model file (meta.json re-hashed, so the
type allow-list is the only defence left) and must be refused, naming its type, without the
payload running: a sentinel file it would create must stay absent.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featlab.core.errors import FeatlabError
from featlab.detectors.svm import ALLOWED_NODES, TRUSTED_TYPES, _load_skops, _skops_nodes
from tests.cli.test_hardening import fails_cleanly, run


def _json(value) -> dict:
    return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode", "content": json.dumps(value),
            "is_json": True}


def _tuple(*items) -> dict:
    return {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode", "content": list(items)}


def _dict(**items) -> dict:
    return {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode", "content": items,
            "key_types": {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode",
                          "content": [_json("str") for _ in items]}}


def _call(module: str, name: str, *args) -> dict:
    """A skops node that calls ``module.name(*args)`` while loading (the reduce-constructor loader)."""
    return {"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode",
            "content": _tuple(*args)}


def _code(sentinel: Path) -> str:
    return f"open({str(sentinel)!r}, 'w').write('pwned')"


def payloads(sentinel: Path) -> dict[str, tuple[dict, str]]:
    """name -> (skops node, the type the refusal must name)."""
    code = _code(sentinel)
    shell = f"touch {sentinel}"
    return {
        "numpy.testing runstring": (_call("numpy.testing._private.utils", "runstring", _json(code), _dict()),
                                    "numpy.testing._private.utils.runstring"),
        "builtins.exec": (_call("builtins", "exec", _json(code)), "builtins.exec"),
        "builtins.eval": (_call("builtins", "eval", _json(f"__import__('os').system({shell!r})")), "builtins.eval"),
        "builtins.getattr": (_call("builtins", "getattr", _call("builtins", "__import__", _json("os")),
                                   _json("system")), "builtins.getattr"),
        "os.system": (_call("os", "system", _json(shell)), "os.system"),
        "posix.system": (_call("posix", "system", _json(shell)), "posix.system"),
        "subprocess.Popen": ({"__class__": "Popen", "__module__": "subprocess", "__loader__": "ObjectNode",
                              "content": _dict(args=_json(["touch", str(sentinel)]))}, "subprocess.Popen"),
        "subprocess.Popen (reduce)": (_call("subprocess", "Popen", _json(["touch", str(sentinel)])), "subprocess.Popen"),
        "functools.partial": ({"__class__": "partial", "__module__": "functools", "__loader__": "PartialNode",
                               "content": {"func": {"__class__": "system", "__module__": "os",
                                                    "__loader__": "FunctionNode", "content": {"module_path": "os",
                                                                                              "function": "system"}},
                                           "args": _tuple(_json(shell)), "kwds": _dict(), "namespace": _dict()}},
                              "functools.partial"),
        "numpy callable as an array": ({"__class__": "runstring", "__module__": "numpy.testing._private.utils",
                                        "__loader__": "NdArrayNode", "type": "json", "content": [_json(code)],
                                        "shape": _json([1])}, "numpy.testing._private.utils.runstring"),
        "bound method": ({"__class__": "Pipeline", "__module__": "sklearn.pipeline", "__loader__": "MethodNode",
                          "content": {"func": "__init__", "obj": _dict()}}, "sklearn.pipeline.Pipeline (MethodNode)"),
    }


def _schema(artifact: Path) -> tuple[dict, dict[str, bytes]]:
    with zipfile.ZipFile(artifact) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    return json.loads(files.pop("schema.json")), files


def _write(schema: dict, files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("schema.json", json.dumps(schema))
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _nested(schema: dict, node: dict) -> dict:
    """Plant ``node`` as an attribute of the pipeline's last estimator (a nested estimator carrying it)."""
    pipeline = schema["content"]["pipeline"]
    steps = pipeline["content"]["content"]["steps"]["content"]
    estimator = steps[-1]["content"][1]
    estimator["content"]["content"]["payload_"] = node
    return schema


def _plant(folder: Path, node: dict, nested: bool) -> None:
    """Put ``node`` into the folder's model file and re-hash meta.json so that only the type check stands."""
    artifact = folder / "model.skops"
    schema, files = _schema(artifact)
    if nested:
        _nested(schema, node)
    else:
        schema["content"]["featlab_meta"] = node
    artifact.write_bytes(_write(schema, files))
    meta = json.loads((folder / "meta.json").read_text())
    meta["sha256"] = hashlib.sha256(artifact.read_bytes()).hexdigest()
    meta["bytes"] = artifact.stat().st_size
    (folder / "meta.json").write_text(json.dumps(meta))


CASES = list(payloads(Path("/x")))


@pytest.mark.parametrize("nested", [False, True], ids=["top-level", "nested-estimator"])
@pytest.mark.parametrize("case", CASES)
def test_crafted_payload_is_refused_before_it_runs(fitted, tmp_path, case, nested):
    sentinel = tmp_path / "pwned"
    node, named = payloads(sentinel)[case]
    folder = tmp_path / "model"
    shutil.copytree(fitted / "models" / "svm", folder)
    _plant(folder, node, nested)
    with pytest.raises(FeatlabError, match="holds types featlab never writes") as refused:
        _load_skops(folder / "model.skops")
    assert named in str(refused.value)
    assert not sentinel.exists(), "the payload ran"


@pytest.mark.parametrize("case", ["numpy.testing runstring", "builtins.exec", "os.system"])
def test_predict_and_evaluate_refuse_a_crafted_folder_in_one_line(fitted, synth_root, tmp_path, case):
    sentinel = tmp_path / "pwned"
    node, named = payloads(sentinel)[case]
    folder = tmp_path / "model"
    shutil.copytree(fitted / "models" / "svm", folder)
    _plant(folder, node, nested=True)
    fails_cleanly(run("predict", folder, synth_root / "test", "--workdir", fitted), named)
    fails_cleanly(run("evaluate", folder, "--workdir", fitted, "--no-plots"), named)
    assert not sentinel.exists(), "the payload ran"


def test_the_genuine_file_names_only_allowed_nodes(fitted):
    nodes = _skops_nodes((fitted / "models" / "svm" / "model.skops").read_bytes())
    assert nodes <= ALLOWED_NODES
    assert not any(name.startswith(("numpy.testing", "builtins.exec", "os.")) for name in TRUSTED_TYPES)


# ------------------------------------------------------------------ property: mutate type names

_NAMES = st.sampled_from(sorted(TRUSTED_TYPES) + [
    "numpy.testing._private.utils.runstring", "builtins.exec", "builtins.eval", "os.system", "subprocess.Popen",
    "numpy.lib.npyio.load", "sklearn.utils._joblib.load", "builtins.getattr", "functools.partial", "numpy.ndarray",
])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_type_names_load_only_within_the_allow_list(fitted, tmp_path_factory, data):
    artifact = fitted / "models" / "svm" / "model.skops"
    schema, files = _schema(artifact)
    typed = []

    def collect(node) -> None:
        if isinstance(node, dict):
            if "__class__" in node:
                typed.append(node)
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(schema)
    for _ in range(data.draw(st.integers(1, 3))):
        node = data.draw(st.sampled_from(typed))
        module, _, name = data.draw(_NAMES).rpartition(".")
        node["__module__"], node["__class__"] = module, name
    mutated = _write(schema, files)
    target = tmp_path_factory.mktemp("mut") / "model.skops"
    target.write_bytes(mutated)
    try:
        _load_skops(target)
    except FeatlabError:
        return  # refused: fine, whatever the reason
    assert _skops_nodes(mutated) <= ALLOWED_NODES, "a file naming a type outside the allow-list was loaded"
