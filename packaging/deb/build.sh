#!/usr/bin/env bash
# Builds cordon_<version>_<arch>.deb from this repository with Debian's own tooling
# (dpkg-buildpackage + debhelper), on Debian 12. The agent and its dependencies from the
# package registry go into a self-contained virtualenv under /opt/cordon.
#
#   bash packaging/deb/build.sh [--out DIR] [--version VERSION]
#
# --out: where the .deb goes (default: dist/ in the repository). --version: the package
# version (default: the project version in pyproject.toml), e.g. to build an upgrade.
# The last line printed is the path of the .deb.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=$repo/dist
version=""
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    *) echo "build.sh: unknown argument $1 (use --out DIR, --version VERSION)" >&2; exit 2 ;;
  esac
done
python=/usr/bin/python3   # Debian's interpreter: the virtualenv links to it once installed
if [ -z "$version" ]; then
  version=$("$python" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
            "$repo/pyproject.toml")
fi
missing=()
for tool in dpkg-buildpackage:dpkg-dev dh:debhelper; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
"$python" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "build.sh: missing Debian packages: ${missing[*]} (apt-get install ${missing[*]})" >&2
  exit 1
fi

work=$(mktemp -d /tmp/cordon-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
src=$work/cordon-$version
mkdir -p "$src" "$out"
# The source: what the wheel and the package need, from the work tree as it is.
(cd "$repo" && tar -cf - --exclude=__pycache__ --exclude='*.egg-info' \
    pyproject.toml README.md agent platforms $(test -d console && echo console) packaging) | tar -xf - -C "$src"
cp -r "$repo/packaging/deb/debian" "$src/debian"
cp "$repo/packaging/systemd/cordon.service" "$src/debian/cordon.service"
cp "$repo/packaging/logrotate/cordon" "$src/debian/cordon.logrotate"
date=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}")
cat > "$src/debian/changelog" <<CHANGES
cordon ($version) unstable; urgency=medium

  * Built from the repository (git $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)).

 -- Cordon maintainers <cordon@example.com>  $date
CHANGES

(cd "$src" && dpkg-buildpackage -b -us -uc) >"$work/build.log" 2>&1 || {
  tail -n 60 "$work/build.log" >&2
  echo "build.sh: dpkg-buildpackage failed (last lines above)" >&2
  exit 1
}
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
deb=cordon_${version}_${arch}.deb
mv "$work/$deb" "$out/$deb"
echo "$out/$deb"
