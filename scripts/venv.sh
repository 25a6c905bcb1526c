# Sourced by demo.sh and test.sh: create .venv on first use, and (re)install the project
# when it was never installed, lacks the extras asked for, or pyproject.toml, setup.py or
# the kernels changed since the last install. The bench extras (matplotlib, threadpoolctl)
# always come along: every command the README shows runs in this .venv.
ensure_venv() {
    local extras="bench${1:+,$1}"
    local py="${PYTHON:-python3}"
    if [ ! -x .venv/bin/python ]; then
        echo "== creating .venv with $($py --version 2>&1)"
        "$py" -m venv .venv
        # setuptools >= 77 reads the SPDX license string, also for an in-place build_ext
        .venv/bin/python -m pip install -q --upgrade pip "setuptools>=77"
    fi
    # The stamp holds one line per extra installed so far.
    local stamp=".venv/.fedcluster-installed"
    local stale=0
    if [ ! -f "$stamp" ]; then
        stale=1
    else
        local extra
        for extra in ${extras//,/ }; do
            grep -qx "$extra" "$stamp" || stale=1
        done
        for f in pyproject.toml setup.py mlcore/_kernels.pyx mlcore/_kernels.pxd mlcore/*.h; do
            if [ -f "$f" ] && [ "$f" -nt "$stamp" ]; then stale=1; fi
        done
    fi
    if [ "$stale" = 1 ]; then
        # Reinstall with every extra installed before too: a changed pyproject.toml may have
        # added to them (demo.sh after test.sh must not leave the test extras behind).
        local all
        all=$({ [ -f "$stamp" ] && cat "$stamp"; tr , '\n' <<< "$extras"; } \
            | grep -v '^$' | sort -u | paste -sd, -)
        echo "== installing the project into .venv (with the $all extras)"
        # setuptools' notice on every editable install (folders named like the packages may
        # shadow them) says nothing about this project: not shown.
        PYTHONWARNINGS="ignore:Editable installation" \
            .venv/bin/python -m pip install -q -e ".[$all]"
        tr , '\n' <<< "$all" > "$stamp.new"
        mv "$stamp.new" "$stamp"
    fi
}
