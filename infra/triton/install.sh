#!/usr/bin/env bash
# Install a CPU tritonserver and the Python backend's environment, idempotently.
#
#   bash infra/triton/install.sh TRITON_HOME BACKEND_VENV
#
# The nvidia-pytriton wheel ships a real tritonserver 2.51 with the Python backend. It is
# unpacked rather than pip-installed because the package pins numpy<2 and pulls tritonclient,
# which would clash with the application venv. Its RPATH points at nvidia_pytriton.libs, so
# keeping the wheel's layout under TRITON_HOME avoids any LD_LIBRARY_PATH.
# Needs only python3 (3.11) with pip and venv: no unzip, no apt packages.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 TRITON_HOME BACKEND_VENV" >&2
    exit 2
fi

readonly PYTRITON_VERSION="0.7.0"
readonly SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly REQUIREMENTS="${SCRIPT_DIR}/requirements.txt"
readonly PYTHON="${PYTHON:-python3}"
triton_home="$1"
backend_venv="$2"

py_version="$("${PYTHON}" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
# The stub must be built for the same Python as the backend venv, or model.py cannot load.
if [[ "${py_version}" != "3.11" ]]; then
    echo "install.sh: ${PYTHON} is Python ${py_version}; the Triton backend venv needs 3.11" >&2
    exit 1
fi

server_dir="${triton_home}/pytriton/tritonserver"
stub_dst="${server_dir}/backends/python/triton_python_backend_stub"
# Written last, so an interrupted install is redone rather than trusted.
marker="${triton_home}/.nvidia-pytriton-${PYTRITON_VERSION}"

install_server() {
    local tmp
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand now: tmp is local to this function
    trap "rm -rf '${tmp}'" RETURN
    "${PYTHON}" -m pip download --quiet --no-deps --dest "${tmp}/wheel" \
        "nvidia-pytriton==${PYTRITON_VERSION}"
    local wheel
    wheel="$(find "${tmp}/wheel" -name "nvidia_pytriton-${PYTRITON_VERSION}-*.whl" | head -n 1)"
    if [[ -z "${wheel}" ]]; then
        echo "install.sh: pip downloaded no nvidia_pytriton ${PYTRITON_VERSION} wheel" >&2
        return 1
    fi
    # zipfile drops Unix permission bits, so restore the executable bit from external_attr:
    # tritonserver and the stubs must stay executable.
    "${PYTHON}" - "${wheel}" "${tmp}/unpacked" <<'PY'
import sys
import zipfile
from pathlib import Path

wheel, dest = sys.argv[1], Path(sys.argv[2])
prefixes = ("pytriton/tritonserver/", "nvidia_pytriton.libs/")
with zipfile.ZipFile(wheel) as zf:
    for info in zf.infolist():
        if not info.filename.startswith(prefixes) or info.is_dir():
            continue
        target = Path(zf.extract(info, dest))
        executable = (info.external_attr >> 16) & 0o111
        target.chmod(0o755 if executable else 0o644)
PY
    local stub_src="${tmp}/unpacked/pytriton/tritonserver/python_backend_stubs/${py_version}/triton_python_backend_stub"
    if [[ ! -f "${stub_src}" ]]; then
        echo "install.sh: the wheel has no Python ${py_version} backend stub" >&2
        return 1
    fi
    cp "${stub_src}" "${tmp}/unpacked/pytriton/tritonserver/backends/python/"
    chmod 0755 "${tmp}/unpacked/pytriton/tritonserver/backends/python/triton_python_backend_stub"

    mkdir -p "${triton_home}"
    rm -rf "${triton_home}/pytriton" "${triton_home}/nvidia_pytriton.libs"
    mv "${tmp}/unpacked/pytriton" "${tmp}/unpacked/nvidia_pytriton.libs" "${triton_home}/"
}

if [[ -f "${marker}" && -x "${server_dir}/bin/tritonserver" && -x "${stub_dst}" ]]; then
    echo "tritonserver ${PYTRITON_VERSION} already in ${triton_home}"
else
    echo "installing tritonserver from nvidia-pytriton ${PYTRITON_VERSION} into ${triton_home}"
    rm -f "${marker}"
    install_server
    touch "${marker}"
fi

if [[ ! -x "${backend_venv}/bin/python3" ]]; then
    "${PYTHON}" -m venv "${backend_venv}"
fi
echo "installing the Python backend environment into ${backend_venv}"
"${backend_venv}/bin/python3" -m pip install --quiet --disable-pip-version-check \
    -r "${REQUIREMENTS}"
"${backend_venv}/bin/python3" -c 'import numpy, onnxruntime; assert numpy.__version__ < "2"'

# The stub links libpython3.11.so. infra.local.tritonserver adds the backend Python's lib dir
# to LD_LIBRARY_PATH, so it must be found there or on the default linker path.
lib_dir="$("${PYTHON}" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')"
if command -v ldd >/dev/null \
    && LD_LIBRARY_PATH="${lib_dir}${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}" ldd "${stub_dst}" \
        | grep -q 'not found'; then
    echo "install.sh: ${stub_dst} cannot find its shared libraries:" >&2
    ldd "${stub_dst}" | grep 'not found' >&2
    echo "use a Python 3.11 built with --enable-shared, or apt-get install libpython3.11" >&2
    exit 1
fi
