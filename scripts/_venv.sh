# Sourced by the scripts: creates .venv on first use and installs the project
# with its test extra; later runs only re-install when pyproject.toml changed.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  # the stamp only after a complete install: an interrupted one is redone next time
  .venv/bin/python -m pip install -q --upgrade pip &&
    .venv/bin/python -m pip install -q -e '.[test]' &&
    rm -f .venv/.installed-* && touch "$stamp" ||
    { echo "scripts/_venv.sh: installing the project into .venv failed" >&2; exit 1; }
fi
export PATH="$PWD/.venv/bin:$PATH"
