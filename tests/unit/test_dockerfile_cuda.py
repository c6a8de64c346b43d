"""Dockerfile.cuda, checked without a Docker engine or a GPU.

The image cannot be built here, so this reads the file the way the builder does and checks what can
be checked: the base image pinned by a tag (no ``latest``), CUDA in it, Python 3.11, torch pinned to
the project's version from the CUDA wheel index, the package installed with its ``cuda`` extra, the
``modelyard`` entry point, the documented commands (configs that exist, arguments the stage parsers
accept) and a ``.dockerignore`` that keeps working state out of the build context.

The parser is a few lines by hand rather than a library (``dockerfile-parse`` on PyPI would do):
one more dev dependency for the subset used here (instructions, ``\\`` continuations, comments,
``ARG``/``ENV`` defaults) is not worth it. Every check is a function returning its problems, and each
is shown failing on a bad Dockerfile too, so none of them can pass vacuously.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.cuda"
DOCKERIGNORE = ROOT / ".dockerignore"
# working state the stage commands write; an image must never carry it
MUST_IGNORE = {".venv", "mlflow.db", "mlartifacts", "data/store", "runs"}


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    args: str  # the arguments, continuations joined, ARG/ENV values substituted
    line: int  # first line in the file


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: ``\\`` continues a line, ``#`` lines are comments (also inside a
    continuation, as the builder treats them), and ``$VAR``/``${VAR}``/``${VAR:-default}`` take the
    values of earlier ``ARG`` defaults and ``ENV`` settings. Heredocs are not supported."""
    instructions: list[Instruction] = []
    scope: dict[str, str] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start, raw = i, lines[i].strip()
        i += 1
        if not raw or raw.startswith("#"):
            continue
        parts = []
        while raw.endswith("\\"):
            parts.append(raw[:-1].strip())
            raw = ""
            while i < len(lines):
                nxt = lines[i].strip()
                i += 1
                if nxt and not nxt.startswith("#"):
                    raw = nxt
                    break
        parts.append(raw)
        keyword, _, args = " ".join(p for p in parts if p).partition(" ")
        keyword = keyword.upper()
        if keyword not in ("ARG",):  # ARG's own default is literal text
            args = _substitute(args, scope)
        if keyword == "ARG":
            name, _, default = args.partition("=")
            scope.setdefault(name.strip(), _unquote(default.strip()))
        elif keyword == "ENV":
            for token in shlex.split(args):
                if "=" in token:
                    name, _, value = token.partition("=")
                    scope[name] = value
        instructions.append(Instruction(keyword, args.strip(), start + 1))
    return instructions


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'" else value


def _substitute(text: str, scope: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2)
        return scope.get(name, default if default is not None else match.group(0))

    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", value, text)


def _runs(instructions: list[Instruction]) -> list[str]:
    return [i.args for i in instructions if i.keyword == "RUN"]


def _exec_form(args: str) -> list[str] | None:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


# ---- checks: each returns the problems it finds --------------------------------------------------

def base_image_problems(instructions: list[Instruction]) -> list[str]:
    froms = [i for i in instructions if i.keyword == "FROM"]
    if not froms:
        return ["no FROM instruction"]
    problems = []
    for inst in froms:
        image = next(t for t in inst.args.split() if not t.startswith("--"))  # after --platform=...
        name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
        if "@sha256:" in image:
            continue  # a digest pins harder than a tag
        if not tag:
            problems.append(f"line {inst.line}: FROM {image} has no tag (it means :latest)")
        elif tag == "latest":
            problems.append(f"line {inst.line}: FROM {image} uses the moving tag latest")
        elif "cuda" not in (name + tag).lower():
            problems.append(f"line {inst.line}: FROM {image} is not a CUDA image")
        elif not re.search(r"\d+\.\d+\.\d+", tag):
            problems.append(f"line {inst.line}: FROM {image}: tag {tag!r} names no full CUDA version")
    return problems


def latest_problems(text: str) -> list[str]:
    return [f"line {n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
            if re.search(r":latest\b", line)]


def python_problems(instructions: list[Instruction], version: str = "3.11") -> list[str]:
    runs = " ".join(_runs(instructions))
    problems = []
    if not re.search(rf"apt-get install[^&;|]*\bpython{re.escape(version)}\b", runs):
        problems.append(f"no RUN installs python{version} (apt-get install python{version})")
    if not re.search(rf"python{re.escape(version)} -m venv", runs):
        problems.append(f"the package is not installed into a python{version} virtualenv")
    return problems


def torch_problems(instructions: list[Instruction], torch_version: str) -> list[str]:
    installs = [r for r in _runs(instructions) if re.search(r"\btorch==", r)]
    if not installs:
        return ["no RUN pins torch=="]
    problems = []
    for run in installs:
        pinned = re.findall(r"\btorch==([\w.+]+)", run)
        if any(v != torch_version for v in pinned):
            problems.append(f"torch pinned to {pinned}, the project pins {torch_version}")
        if not re.search(r"--(?:extra-)?index-url\s+\S*download\.pytorch\.org/whl/cu\d+", run):
            problems.append("torch does not come from a CUDA wheel index (download.pytorch.org/whl/cuXXX)")
    return problems


def extra_problems(instructions: list[Instruction], extra: str = "cuda") -> list[str]:
    for run in _runs(instructions):
        for match in re.finditer(r"pip install[^&;]*?[\"']?\.\[([\w,\s-]+)\]", run):
            if extra in [e.strip() for e in match.group(1).split(",")]:
                return []
    return [f"the package is not installed with its [{extra}] extra (pip install \".[{extra}]\")"]


def entrypoint_problems(instructions: list[Instruction], scripts: dict[str, str]) -> list[str]:
    entries = [i for i in instructions if i.keyword == "ENTRYPOINT"]
    if not entries:
        return ["no ENTRYPOINT"]
    argv = _exec_form(entries[-1].args)
    if argv is None:
        return [f"line {entries[-1].line}: ENTRYPOINT is not in exec form (a JSON list): signals would go to a shell"]
    if argv[:2] == ["tini", "--"]:  # an init that reaps children and forwards signals
        argv = argv[2:]
    problems = []
    if argv != ["modelyard"]:
        problems.append(f"ENTRYPOINT runs {argv}, not modelyard")
    elif "modelyard" not in scripts:
        problems.append("modelyard is not a console script in pyproject's [project.scripts]")
    cmds = [i for i in instructions if i.keyword == "CMD"]
    if not cmds or _exec_form(cmds[-1].args) != ["--help"]:
        problems.append('CMD is not ["--help"] (a bare `docker run` should show the commands)')
    users = [i.args.split(":")[0] for i in instructions if i.keyword == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append("the image runs as root (no USER, or USER root last)")
    return problems


def documented_commands(text: str) -> list[list[str]]:
    """``modelyard`` argument lists of the ``docker run ... modelyard:cuda <stage> ...`` comment lines."""
    joined, current = [], ""
    for line in text.splitlines():
        if not line.startswith("#"):
            continue
        body = line.lstrip("#").strip()
        current = f"{current} {body[:-1]}" if body.endswith("\\") else f"{current} {body}"
        if not body.endswith("\\"):
            joined.append(current.strip())
            current = ""
    commands = []
    for cmd in joined:
        if cmd.startswith("docker run") and " modelyard:cuda " in cmd and "--entrypoint" not in cmd:
            commands.append(shlex.split(cmd.split(" modelyard:cuda ", 1)[1]))
    return commands


def referenced_file_problems(text: str, root: Path) -> list[str]:
    paths = sorted(set(re.findall(r"(?<![\w/])((?:configs|scripts)/[\w./-]+\.(?:yaml|sh))", text)))
    return [f"{p} is named in the Dockerfile but not in the repository" for p in paths if not (root / p).is_file()]


def dockerignore_problems(text: str) -> list[str]:
    patterns = {line.strip().strip("/") for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith(("#", "!"))}
    return [f".dockerignore does not exclude {p}" for p in sorted(MUST_IGNORE - patterns)]


# ---- the real files ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def text() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def instructions(text) -> list[Instruction]:
    return parse_dockerfile(text)


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def project_torch_version() -> str:
    """The torch the project pins for its own environment (the Makefile's TORCH_SPEC)."""
    match = re.search(r"^TORCH_SPEC\s*\?=\s*torch==([\w.]+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "the Makefile no longer pins TORCH_SPEC ?= torch==X; update project_torch_version()"
    return match.group(1)


def test_the_base_image_is_a_cuda_image_pinned_by_tag(instructions, text):
    assert base_image_problems(instructions) == []
    assert latest_problems(text) == []


def test_python_3_11_is_installed_and_used(instructions):
    assert python_problems(instructions) == []


def test_torch_is_pinned_to_the_projects_version_from_a_cuda_index(instructions):
    assert torch_problems(instructions, project_torch_version()) == []


def test_the_package_is_installed_with_the_cuda_extra(instructions):
    assert extra_problems(instructions) == []
    extras = pyproject()["project"]["optional-dependencies"]
    assert any(dep.startswith("onnxruntime-gpu") for dep in extras["cuda"])


def test_the_entry_point_is_the_modelyard_console_script(instructions):
    scripts = pyproject()["project"]["scripts"]
    assert scripts["modelyard"] == "modelyard.cli:main"
    assert entrypoint_problems(instructions, scripts) == []


def test_the_documented_commands_name_existing_files_and_parse(text):
    from modelyard.config import parse_config
    from modelyard.data import DataConfig
    from modelyard.export.config import ExportConfig
    from modelyard.serve.ray.config import RayServeConfig
    from modelyard.train.config import parse_train_config

    assert referenced_file_problems(text, ROOT) == []
    commands = documented_commands(text)
    stages = {c[0] for c in commands}
    assert {"train", "export", "serve"} <= stages, f"documented stages: {sorted(stages)}"
    parsers = {"data": lambda argv: parse_config(DataConfig, argv), "train": parse_train_config,
               "export": lambda argv: parse_config(ExportConfig, argv),
               "serve": lambda argv: parse_config(RayServeConfig, argv[1:])}  # `serve ray --config ...`
    for argv in commands:
        if argv[0] in parsers:
            parsers[argv[0]]([str(ROOT / a) if a.endswith(".yaml") else a for a in argv[1:]])
    serve = next(c for c in commands if c[0] == "serve")
    assert "0.0.0.0" in serve, "inside a container Ray Serve must listen on 0.0.0.0 to be reachable"


def test_the_documented_triton_image_is_the_one_the_launcher_pins(text):
    pinned = re.search(r"TRITON_IMAGE:-([^}]+)\}", (ROOT / "scripts" / "triton_container.sh").read_text()).group(1)
    assert pinned in text
    assert "docker run --gpus all" in text and "--model-repository=/models" in text


def test_the_serving_ports_are_exposed(instructions):
    exposed = {p.split("/")[0] for i in instructions if i.keyword == "EXPOSE" for p in i.args.split()}
    assert {"8000", "8001", "8002"} <= exposed


def test_dockerignore_keeps_working_state_out():
    assert dockerignore_problems(DOCKERIGNORE.read_text()) == []


# ---- the checks fail on bad Dockerfiles ----------------------------------------------------------

GOOD = """\
# syntax comment
ARG TORCH=2.13.0
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
RUN apt-get install -y \\
    # a comment inside a continuation
    python3.11 python3.11-venv \\
 && python3.11 -m venv /opt/venv
RUN pip install "torch==${TORCH}" --index-url https://download.pytorch.org/whl/cu126
RUN pip install ".[cuda]"
USER app
ENTRYPOINT ["modelyard"]
CMD ["--help"]
"""


def test_the_parser_joins_continuations_skips_comments_and_substitutes_args():
    instructions = parse_dockerfile(GOOD)
    assert [i.keyword for i in instructions] == ["ARG", "FROM", "RUN", "RUN", "RUN", "USER", "ENTRYPOINT", "CMD"]
    assert instructions[2].args == "apt-get install -y python3.11 python3.11-venv && python3.11 -m venv /opt/venv"
    assert instructions[2].line == 4
    assert 'torch==2.13.0"' in instructions[3].args


def test_every_check_passes_on_the_good_example():
    instructions = parse_dockerfile(GOOD)
    assert base_image_problems(instructions) == [] and latest_problems(GOOD) == []
    assert python_problems(instructions) == []
    assert torch_problems(instructions, "2.13.0") == []
    assert extra_problems(instructions) == []
    assert entrypoint_problems(instructions, {"modelyard": "modelyard.cli:main"}) == []


@pytest.mark.parametrize("old, new, check, expected", [
    ("nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04", "nvidia/cuda", "base", "has no tag"),
    ("nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04", "nvidia/cuda:latest", "base", "moving tag latest"),
    ("nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04", "ubuntu:22.04", "base", "not a CUDA image"),
    ("nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04", "nvidia/cuda:12-runtime", "base", "no full CUDA version"),
    ("FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04", "", "base", "no FROM"),
    ("python3.11 python3.11-venv", "python3 python3-venv", "python", "installs python3.11"),
    ("python3.11 -m venv", "python3 -m venv", "python", "virtualenv"),
    ("ARG TORCH=2.13.0", "ARG TORCH=2.12.0", "torch", "the project pins 2.13.0"),
    ('"torch==${TORCH}"', "torch", "torch", "no RUN pins torch=="),
    ("--index-url https://download.pytorch.org/whl/cu126", "", "torch", "CUDA wheel index"),
    ('".[cuda]"', '".[dev]"', "extra", "[cuda] extra"),
    ('".[cuda]"', '"modelyard"', "extra", "[cuda] extra"),
    ('["modelyard"]', '["python", "-m", "modelyard"]', "entry", "not modelyard"),
    ('ENTRYPOINT ["modelyard"]', "ENTRYPOINT modelyard", "entry", "exec form"),
    ('ENTRYPOINT ["modelyard"]\n', "", "entry", "no ENTRYPOINT"),
    ('CMD ["--help"]', 'CMD ["train"]', "entry", "CMD is not"),
    ("USER app", "USER root", "entry", "runs as root"),
    ("USER app\n", "", "entry", "runs as root"),
])
def test_each_check_fails_on_a_bad_dockerfile(old, new, check, expected):
    assert old in GOOD
    bad = GOOD.replace(old, new)
    instructions = parse_dockerfile(bad)
    problems = {
        "base": lambda: base_image_problems(instructions) + latest_problems(bad),
        "python": lambda: python_problems(instructions),
        "torch": lambda: torch_problems(instructions, "2.13.0"),
        "extra": lambda: extra_problems(instructions),
        "entry": lambda: entrypoint_problems(instructions, {"modelyard": "modelyard.cli:main"}),
    }[check]()
    assert any(expected in p for p in problems), problems


def test_the_entry_point_must_be_a_declared_console_script():
    assert any("console script" in p for p in entrypoint_problems(parse_dockerfile(GOOD), {"other": "x:main"}))


def test_a_named_config_that_does_not_exist_is_reported(tmp_path):
    (tmp_path / "configs" / "train").mkdir(parents=True)
    (tmp_path / "configs" / "train" / "gpu.yaml").write_text("")
    text = "# docker run modelyard:cuda train --config configs/train/gpu.yaml --config configs/train/nope.yaml\n"
    assert referenced_file_problems(text, tmp_path) == [
        "configs/train/nope.yaml is named in the Dockerfile but not in the repository"]


def test_documented_commands_join_continued_comment_lines():
    text = ("#   docker run --gpus all --rm -v \"$PWD:/workspace\" modelyard:cuda \\\n"
            "#     train --config configs/train/gpu.yaml\n"
            "#   docker run --entrypoint bash modelyard:cuda scripts/gpu_tier.sh\n")
    assert documented_commands(text) == [["train", "--config", "configs/train/gpu.yaml"]]


def test_a_dockerignore_missing_working_state_is_reported():
    assert dockerignore_problems(".venv\n/mlflow.db\nmlartifacts/\ndata/store\nruns\n") == []
    problems = dockerignore_problems(".venv\nmlflow.db\n# runs\n!data/store\n")
    assert problems == [".dockerignore does not exclude data/store", ".dockerignore does not exclude mlartifacts",
                        ".dockerignore does not exclude runs"]
