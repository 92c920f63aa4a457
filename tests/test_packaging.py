"""What can be checked of the package and the image without a Docker engine."""

import json
import os
import re
import shlex
import subprocess
import sys
from importlib import metadata

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


# The stack under test is the one this interpreter belongs to: TFX 1.16 on 3.10, TFX 1.21 on 3.11-3.13.
PYTHON = "{}.{}".format(*sys.version_info[:2])
STACK = {"3.10": "1.16", "3.11": "1.21", "3.12": "1.21", "3.13": "1.21"}[PYTHON]
# Each (stack, Python) has its own tested pins; the Makefile's CONSTRAINTS names the same files.
PIN_FILES = {
    ("1.16", "3.10"): "stacks/tfx-1.16.txt",
    ("1.21", "3.11"): "stacks/tfx-1.21-py3.11.txt",
    ("1.21", "3.12"): "stacks/tfx-1.21-py3.12.txt",
    ("1.21", "3.13"): "stacks/tfx-1.21.txt",
}
CONSTRAINTS = PIN_FILES[STACK, PYTHON]


def _pins(pin_file: str = CONSTRAINTS):
    pins = {}
    for line in _read(pin_file).splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_the_interpreter_is_the_stacks_python():
    assert re.fullmatch(r"3\.10\.\d+", _read(".python-version").strip())  # pyenv's pick for the 1.16 stack
    assert (STACK, PYTHON) in PIN_FILES


def test_setup_admits_exactly_the_pythons_with_tested_pins():
    requires = metadata.metadata("tfx-model-pruning")["Requires-Python"]
    from packaging.specifiers import SpecifierSet

    admitted = {f"3.{minor}" for minor in range(8, 16) if SpecifierSet(requires).contains(f"3.{minor}.0")}
    assert admitted == {python for _, python in PIN_FILES}, requires
    for (stack, python), pin_file in PIN_FILES.items():
        assert _pins(pin_file)["tfx"].startswith(stack + "."), (python, pin_file)


MEASURED = {
    "1.16": {
        "tfx": r"1\.16\.0",
        "tensorflow": r"2\.16\.\d+",
        "tf-keras": r"2\.16\.\d+",
        "tensorflow-model-analysis": r"0\.47\.\d+",
        "protobuf": r"3\.20\.\d+",
        "kfp": r"2\.\d+\.\d+",
        "apache-beam": r"2\.\d+\.\d+",
    },
    "1.21": {
        "tfx": r"1\.21\.0",
        "tensorflow": r"2\.21\.\d+",
        "tf-keras": r"2\.21\.\d+",
        "tensorflow-model-analysis": r"0\.52\.\d+",
        "protobuf": r"6\.\d+\.\d+",
        "kfp": r"2\.16\.\d+",
        "apache-beam": r"2\.77\.\d+",
        "tensorboard": r"2\.21\.\d+",
    },
}


@pytest.mark.parametrize(("stack", "python"), sorted(PIN_FILES))
def test_each_stacks_pins_hold_its_measured_versions(stack, python):
    pins = _pins(PIN_FILES[stack, python])
    for package, pattern in {**MEASURED[stack], "tensorflow-model-optimization": r"0\.8\.1", "dill": ".+"}.items():
        assert re.fullmatch(pattern, pins.get(package, "")), (stack, python, package, pins.get(package))
    # One linter and test runner for every stack: the same code must pass the same checks.
    for tool in ("ruff", "pytest", "pytest-xdist"):
        assert pins[tool] == _pins(PIN_FILES["1.16", "3.10"])[tool], tool


def test_install_requirements_are_satisfied_by_the_pins():
    pins = _pins()
    for requirement in metadata.requires("tfx-model-pruning"):
        req = Requirement(requirement)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in {CONSTRAINTS}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{requirement} vs pin {pins[name]}"


def test_installed_versions_match_the_pins():
    pins = _pins()
    for package in MEASURED[STACK]:
        assert metadata.version(package) == pins[package], package


def test_pinned_environment_has_no_broken_requirements():
    # The image runs the same `pip check` after installing; a conflict would fail its build.
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pip check" in _read("Dockerfile")


def test_console_entry_point_is_installed_and_runs():
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts["prune-pipeline"] == "tfx_model_pruning_pipelines.cli:main"
    out = subprocess.run(
        [sys.executable, "-m", "tfx_model_pruning_pipelines.cli", "run-local", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--target-sparsity" in out.stdout


def _dockerfile_instructions():
    lines, current = [], ""
    for raw in _read("Dockerfile").splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(line.split(" ", 1)[0].upper(), line.split(" ", 1)[1]) for line in lines]


def test_dockerfile_builds_either_stack_on_a_glibc_its_wheels_take_sets_legacy_keras_and_drops_root():
    instructions = _dockerfile_instructions()
    bases = {arg.split(" AS ")[1]: arg.split(" AS ")[0] for op, arg in instructions if op == "FROM" and " AS " in arg}
    assert bases["base-1.16"].startswith("python:" + _read(".python-version").strip() + "-slim-bookworm")
    assert bases["base-1.21"].startswith("python:3.13") and bases["base-1.21"].endswith("-trixie")  # glibc 2.41
    assert ("ARG", "STACK=1.21") in instructions  # what users install today is the default
    assert ("FROM", "base-${STACK}") in instructions
    assert ("COPY", "stacks/tfx-${STACK}.txt ./constraints.txt") in instructions
    env = " ".join(arg for op, arg in instructions if op == "ENV")
    assert "TF_USE_LEGACY_KERAS=1" in env
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert instructions[-1][0] == "CMD"
    assert "-c constraints.txt" in " ".join(arg for op, arg in instructions if op == "RUN")


def test_dockerfile_copies_only_what_the_build_context_keeps():
    allowed = {line[1:].rstrip("/") for line in _read(".dockerignore").splitlines() if line.startswith("!")}
    assert _read(".dockerignore").splitlines()[1] == "*"  # deny by default, then allow
    for op, arg in _dockerfile_instructions():
        if op != "COPY":
            continue
        sources = shlex.split(arg)[:-1]
        if "${STACK}" in arg:
            sources = [source.replace("${STACK}", stack) for source in sources for stack in ("1.16", "1.21")]
        for source in sources:
            assert os.path.exists(os.path.join(ROOT, source)), source
            assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"


def test_dockerfile_command_is_a_declared_console_script():
    cmd = next(arg for op, arg in reversed(_dockerfile_instructions()) if op == "CMD")
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert json.loads(cmd)[0] == "prune-pipeline"
    assert scripts["prune-pipeline"] == "tfx_model_pruning_pipelines.cli:main"


def _make_dry_run(target: str, *variables: str) -> list[str]:
    """The commands ``make <target>`` would run, with the venv taken as already set up."""
    # Under `make test` this is a nested make: without the parent's variables it prints only commands.
    environment = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", ".venv/.installed", "-o", ".venv-1.21/.installed", target]
        + list(variables),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=environment,
    )
    return done.stdout.splitlines()


def test_make_run_runs_the_local_pipeline_and_make_test_runs_ruff_and_every_test():
    # No --output-dir: run-local's default, runs/<pipeline name>, keeps pipelines apart.
    assert any(line.endswith("prune-pipeline run-local") for line in _make_dry_run("run"))
    assert any(line.endswith("run-local --output-dir runs/x") for line in _make_dry_run("run", "OUTPUT_DIR=runs/x"))
    test_commands = _make_dry_run("test")
    assert any("ruff check ." in line and "ruff format --check ." in line for line in test_commands)
    assert any("-m pytest" in line and line.split("#")[0].rstrip().endswith(" tests") for line in test_commands)


def test_every_setup_command_is_one_well_formed_shell_command_that_logs_pips_output():
    """A comma inside make's $(call ...) once cut `-e '.[dev,docs]'` in two (an unterminated quote)."""
    environment = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", "docs", f"STACK={STACK}", f"PY={PYTHON}"],
        cwd=ROOT, capture_output=True, text=True, check=True, env=environment,
    )  # fmt: skip
    installs = [line for line in done.stdout.splitlines() if "pip install" in line]
    assert len(installs) == 3, installs  # pip and setuptools, the stack, the docs extra
    for line in installs:
        words = shlex.split(line)  # raises on a cut quote
        assert "--quiet" in words and any(re.fullmatch(r">>\.venv[\w.-]*/install\.log", w) for w in words), line
    assert ".[dev,docs]" in shlex.split(installs[-1])


def test_ci_runs_the_test_target_on_both_stacks():
    done = subprocess.run(["bash", "-n", os.path.join(ROOT, ".ci", "run")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr  # it parses
    commands = [line.strip() for line in _read(".ci/run").splitlines() if line.strip() and not line.startswith("#")]
    for stack in ("1.16", "1.21"):
        assert any(f"make test STACK={stack}" in command for command in commands), stack
    for python in ("3.11", "3.12"):  # the unit tier on the other Pythons TFX 1.21 runs on
        assert any(f"make unit STACK=1.21 PY={python}" in command for command in commands), python


def test_a_stack_this_machine_cannot_run_natively_runs_inside_debian_13():
    native = subprocess.run(["sh", "stacks/native.sh"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    other = [line.strip() for line in _make_dry_run("test", "STACK=1.21")]
    if native == "1.21":
        assert any("-m pytest" in line for line in other)
    else:
        assert "stacks/debian13.sh make test STACK=1.21 PY=3.13" in other
    with pytest.raises(subprocess.CalledProcessError):
        _make_dry_run("test", "STACK=2.0")


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory):
    """The files of the wheel the Dockerfile's `pip install .` builds (not the editable dev install,
    which would hide a module or template missing from the package)."""
    import zipfile

    out = tmp_path_factory.mktemp("wheel")
    build_dir = tmp_path_factory.mktemp("src")
    for name in ("setup.py", "README.md"):
        subprocess.run(["cp", os.path.join(ROOT, name), str(build_dir)], check=True)
    for package in ("components", "pipelines", "stacks"):  # what .dockerignore lets into the build context
        subprocess.run(["cp", "-r", os.path.join(ROOT, package), str(build_dir)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), "."],
        cwd=build_dir,
        check=True,
    )
    (wheel,) = out.glob("*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def test_the_image_package_holds_every_module_the_compiled_pipeline_names(tmp_path, wheel_files):
    import yaml

    from tfx_model_pruning_pipelines import cli, kubeflow

    out = tmp_path / "kfp"
    args = ["compile", "--output-dir", str(out), "--pipeline-root", "gs://b/root", "--serving-dir", "gs://b/serving"]
    assert cli.main([*args, "--data-root", "gs://b/data"]) == 0
    spec = yaml.safe_load((out / "penguin-pruning.yaml").read_text())
    modules = {"tfx_model_pruning_pipelines/penguin_trainer.py"}  # the Trainer's run_fn
    for executor in spec["deploymentSpec"]["executors"].values():
        container = executor["container"]
        assert container["image"] == kubeflow.default_image()
        container_args = container["args"]
        if "--executor_class_path" in container_args:
            path = container_args[container_args.index("--executor_class_path") + 1]
            if path.startswith("tfx_model_pruning."):
                modules.add(path.rsplit(".", 1)[0].replace(".", "/") + ".py")
    assert {"tfx_model_pruning/evaluator_gate/executor.py", "tfx_model_pruning/atomic_pusher/executor.py"} <= modules
    missing = sorted(modules - wheel_files)
    assert not missing, f"the image would lack {missing}"
    assert "tfx_model_pruning/evaluator_gate/templates/release_report.html.j2" in wheel_files
    # TFX's entrypoint imports the custom type by its title, tfx_model_pruning.PruningReport.
    assert {"tfx_model_pruning/__init__.py", "tfx_model_pruning/artifacts.py"} <= wheel_files


def test_make_image_tags_the_image_the_compiled_pipeline_names():
    from tfx_model_pruning_pipelines import kubeflow

    assert _make_dry_run("image", "STACK=1.21") == [
        f"docker build --build-arg STACK=1.21 -t {kubeflow.default_image()} ."
    ]
