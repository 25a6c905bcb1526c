# Sourced by demo.sh and test.sh: create .venv on first use and (re)install the project
# when pyproject.toml, setup.py or the kernels changed since the last install.
ensure_venv() {
    local extras="${1:-}"
    local py="${PYTHON:-python3}"
    if [ ! -x .venv/bin/python ]; then
        echo "== creating .venv with $($py --version 2>&1)"
        "$py" -m venv .venv
        .venv/bin/python -m pip install -q --upgrade pip
    fi
    local stamp=".venv/.installed-${extras:-base}"
    local sources=(pyproject.toml setup.py mlcore/_kernels.pyx mlcore/_kernels.pxd)
    local stale=0
    [ -f "$stamp" ] || stale=1
    for f in "${sources[@]}"; do
        if [ -f "$f" ] && [ "$f" -nt "$stamp" ]; then stale=1; fi
    done
    if [ "$stale" = 1 ]; then
        echo "== installing the project into .venv${extras:+ (with $extras extras)}"
        local target="."
        [ -n "$extras" ] && target=".[$extras]"
        .venv/bin/python -m pip install -q -e "$target"
        touch "$stamp"
    fi
}
