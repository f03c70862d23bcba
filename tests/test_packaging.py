"""featureaudit installed as a wheel, not from this checkout: every package and the templates come along."""

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("tasks", "flows", "templates", "pyproject.toml", "README.md")


def test_a_wheel_installs_every_package_and_the_templates(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in SHIPPED:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                           if (REPO / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    scratch = tmp_path / "venv"
    venv.create(scratch, with_pip=False)
    site = subprocess.run([scratch / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "--python", str(scratch / "bin" / "python"), "install", "-q",
                    "--no-deps", *map(str, (tmp_path / "dist").glob("*.whl"))], check=True, capture_output=True,
                   timeout=300)
    # The dependencies come from this environment; featureaudit itself only from the scratch one.
    env = {"PYTHONPATH": sysconfig.get_path("purelib"), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"}
    probe = ("import tasks, tasks.report.render as render, tasks.methods.table; "
             "print(tasks.__file__); print(all(render.TEMPLATES.joinpath(t).is_file() "
             "for t in ('report.html.j2', 'sections/shap.html.j2')))")
    where, templates = subprocess.run([scratch / "bin" / "python", "-c", probe], cwd=tmp_path, env=env, check=True,
                                      capture_output=True, text=True, timeout=300).stdout.split()
    assert Path(where).is_relative_to(site) and templates == "True"
    helped = subprocess.run([scratch / "bin" / "featureaudit", "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0 and "usage: featureaudit" in helped.stdout
    refused = subprocess.run([scratch / "bin" / "featureaudit", "run", "--registry", "r", "--model", "m", "--repeats",
                              "0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--repeats 0: Input should be greater than" in refused.stderr  # options.json
