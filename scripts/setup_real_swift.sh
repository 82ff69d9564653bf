#!/usr/bin/env bash
# A separate virtualenv with the real ms-swift, for the opt-in `pytest -m swift` tests and
# for GPU hosts: `.venv-swift/` next to the project (never the uv project venv, which stays
# light: ms-swift brings transformers, peft, trl, datasets and torch).
#
# torch is installed first and pinned, so that ms-swift (which only asks for a range) keeps
# it instead of pulling another build of several GB. Where pip finds a local CPU wheel of
# torch 2.13.0 (this project's CPU machines) that is the one taken; elsewhere pip takes the
# index's build of that version (PyPI's Linux x86_64 wheel is the CUDA one, which is what a
# GPU host wants). TORCH_SPEC, MS_SWIFT_SPEC and pip's own PIP_INDEX_URL choose otherwise.
# Measured here: ~90 s, 2.1 GB (about 130 MB downloaded, the rest from local wheels).
#
# Tracking block (below): MLflow, pinned, for the tracking tests: the training's MLflow
# client and the loopback `mlflow server` the tests start. MLFLOW_SPEC chooses another.
# Measured here: 32 more packages, ~205 MB (scikit-learn, flask, alembic, mlflow itself),
# ~56 s; a venv made before the block gets it on the next run of this script.
#
# Usage: scripts/setup_real_swift.sh [venv dir]   (default: .venv-swift)
# Idempotent: a venv with the supported ms-swift and this checkout's swift_trainer is reused.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${1:-.venv-swift}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
MS_SWIFT_SPEC="${MS_SWIFT_SPEC:-ms-swift==4.6.0}"
EVALSCOPE_SPEC="${EVALSCOPE_SPEC:-evalscope[opencompass]==1.10.0}"

installed_version() {
  "$VENV/bin/python" - <<'PY' 2>/dev/null || true
import importlib.metadata as m
try:
    print(m.version("ms-swift"))
except m.PackageNotFoundError:
    pass
PY
}

installed_evalscope() {
  "$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('evalscope'))" \
    2>/dev/null || true
}

installed_project() {
  "$VENV/bin/python" -c "import swift_trainer; print(swift_trainer.__file__)" 2>/dev/null || true
}

# --- Experiment tracking: MLflow in the same venv (client for training, server for tests) ---
# 3.17.2: the newest mlflow whose mlflow-tracing of the same version the index holds.
MLFLOW_SPEC="${MLFLOW_SPEC:-mlflow==3.17.2}"
install_tracking() {
  if [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mlflow"))' \
    2>/dev/null || true)" = "${MLFLOW_SPEC#mlflow==}" ]; then
    return
  fi
  local began
  began=$(date +%s)
  # The torch pin keeps the build installed above.
  "$VENV/bin/python" -m pip --disable-pip-version-check --no-input install --quiet \
    "$MLFLOW_SPEC" "$TORCH_SPEC" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  echo "installed $MLFLOW_SPEC in $(( $(date +%s) - began ))s"
}
# --- end of the tracking block ---

# Reuse only a venv with the right ms-swift whose swift_trainer is this checkout's.
if [ -x "$VENV/bin/swift" ] && [ "$(installed_version)" = "${MS_SWIFT_SPEC#ms-swift==}" ] \
  && [ "$(installed_project)" = "$PWD/src/swift_trainer/__init__.py" ] \
  && [ "$(installed_evalscope)" = "${EVALSCOPE_SPEC##*==}" ]; then
  install_tracking
  echo "$VENV already has $MS_SWIFT_SPEC and swift_trainer; nothing to do"
  exit 0
fi

start=$(date +%s)
"$PYTHON" -m venv "$VENV"
pip_install() {
  # pip warns about every configured local index folder a package is not in; drop that noise.
  "$VENV/bin/python" -m pip --disable-pip-version-check --no-input install --quiet "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}
pip_install --upgrade pip
pip_install "$TORCH_SPEC"
# The pin keeps the torch just installed: a resolver that wanted another would fail here
# instead of silently downloading a CUDA build.
pip_install "$MS_SWIFT_SPEC" "$TORCH_SPEC"

# --- evaluation: EvalScope for `swift eval` (tests/runner/test_real_swift_eval.py) ------
# ms-swift 4.6.0's `swift eval` uses EvalType.SERVICE, which EvalScope removed after
# 1.10.0, and lists OpenCompass's datasets to check the names it is given, so the
# OpenCompass extra (ms-opencompass) must be importable. ms-opencompass pins numpy<2, which
# the pyarrow of `datasets` refuses: numpy goes back to the version ms-swift brought.
# OpenCompass's configs (mmengine) import pkg_resources, which setuptools 81 dropped.
# Measured here: ~140 s and +0.5 GB more (about 60 MB downloaded).
numpy_spec="numpy==$("$VENV/bin/python" -c 'import numpy; print(numpy.__version__)')"
pip_install "$EVALSCOPE_SPEC" "$TORCH_SPEC"
# pip reports the numpy<2 conflict of ms-opencompass here (swift eval only lists its
# dataset names) and goes on.
pip_install "$numpy_spec" "setuptools<81" "$TORCH_SPEC"
"$VENV/bin/python" -W ignore -c "import numpy, pyarrow, evalscope, opencompass, pkg_resources"
# --- end of evaluation ----------------------------------------------------------------

# This project too, so scripts (gpu_host_check.py, make_tiny_qwen2.py) run on this python.
pip_install -e . "$TORCH_SPEC"
install_tracking
"$VENV/bin/swift" --help >/dev/null 2>&1 || true
"$VENV/bin/python" - <<'PY'
import importlib.metadata as m
for name in ("ms-swift", "torch", "transformers", "peft", "trl", "evalscope", "numpy", "mlflow",
             "swift-trainer"):
    print(f"{name}=={m.version(name)}")
PY
echo "set up $VENV in $(( $(date +%s) - start ))s ($(du -sh "$VENV" | cut -f1))"
