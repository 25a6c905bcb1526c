# Sourced by demo.sh and test.sh: create .venv on first use, and (re)install the project
# when it was never installed, lacks the extras asked for, or pyproject.toml, setup.py or
# the kernels changed since the last install.
ensure_venv() {
    local extras="${1:-}"
    local py="${PYTHON:-python3}"
    if [ ! -x .venv/bin/python ]; then
        echo "== creating .venv with $($py --version 2>&1)"
        "$py" -m venv .venv
        # setuptools >= 77 reads the SPDX license string, also for an in-place build_ext
        .venv/bin/python -m pip install -q --upgrade pip "setuptools>=77"
    fi
    local stamp=".venv/.fedcluster-installed"
    local stale=0
    if [ ! -f "$stamp" ]; then
        stale=1
    elif [ -n "$extras" ] && ! grep -qx "$extras" "$stamp"; then
        stale=1
    else
        for f in pyproject.toml setup.py mlcore/_kernels.pyx mlcore/_kernels.pxd mlcore/*.h; do
            if [ -f "$f" ] && [ "$f" -nt "$stamp" ]; then stale=1; fi
        done
    fi
    if [ "$stale" = 1 ]; then
        echo "== installing the project into .venv${extras:+ (with $extras extras)}"
        local target="."
        [ -n "$extras" ] && target=".[$extras]"
        .venv/bin/python -m pip install -q -e "$target"
        { [ -f "$stamp" ] && cat "$stamp"; echo "$extras"; } | sort -u > "$stamp.new"
        mv "$stamp.new" "$stamp"
    fi
}
