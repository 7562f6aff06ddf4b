# Sourced by the test scripts that drive Switchboard from Python: the one
# .venv at the repository root, and the versions of what they install in it,
# pinned here so two scripts cannot ask for two versions of one package.
MCP_VERSION=2.3.0
SELENIUM_VERSION=4.51.0
OTEL_PROTO_VERSION=1.45.2
A2A_SDK_VERSION=1.3.0
UVICORN_VERSION=0.55.0

# venv_install PACKAGE VERSION [EXTRAS]: makes .venv if it is missing and
# installs PACKAGE[EXTRAS]==VERSION into it unless that version is already
# there.
venv_install() {
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" 2>/dev/null; then
        .venv/bin/pip install --quiet "$1${3:+[$3]}==$2"
    fi
}
