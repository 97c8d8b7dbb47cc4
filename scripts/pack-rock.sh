#!/bin/sh
# Packs the source rock of a versioned rockspec with `luarocks pack`, from this checkout and
# without the network.  Usage: pack-rock.sh [rockspec [outdir]]
# (default luasip-0.1.0-1.rockspec into build/).
# luarocks pack clones source.url at source.tag: here git is pointed at a throw-away local
# clone of this checkout (git's url.<base>.insteadOf, given through GIT_CONFIG_* so no
# config file changes), where the tag is made at HEAD when the checkout has no such tag
# yet.  The rock holds the rockspec unchanged, so it installs anywhere with no fetch.
# Uncommitted changes are not in the rock (a warning says so).
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)
spec=${1:-luasip-0.1.0-1.rockspec}
out=${2:-build}
field() { sed -n "s/^ *$1 *= *\"\\(.*\\)\",*\$/\\1/p" "$spec" | head -n 1; }
url=$(field url)
tag=$(field tag)
case "$url" in
  git+*) ;;
  *) echo "pack-rock: $spec: source.url is not a git URL: $url" >&2; exit 1 ;;
esac
[ -n "$tag" ] || { echo "pack-rock: $spec has no source.tag" >&2; exit 1; }
[ -z "$(git status --porcelain --untracked-files=no)" ] ||
  echo "pack-rock: warning: uncommitted changes are not in the rock" >&2

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
git clone -q --no-hardlinks "$root" "$tmp/repo"
git -C "$tmp/repo" rev-parse -q --verify "refs/tags/$tag" >/dev/null ||
  git -C "$tmp/repo" tag "$tag" HEAD
mkdir -p "$out"
out=$(cd "$out" && pwd)
cp "$spec" "$tmp/"
# luarocks runs `git clone --depth=1 --branch=<tag> <url without git+>`
cd "$tmp"
GIT_CONFIG_COUNT=2 \
  GIT_CONFIG_KEY_0="url.file://$tmp/repo.insteadOf" GIT_CONFIG_VALUE_0="${url#git+}" \
  GIT_CONFIG_KEY_1=advice.detachedHead GIT_CONFIG_VALUE_1=false \
  luarocks pack "$(basename "$spec")" >/dev/null
rock=$(basename "$spec" .rockspec).src.rock
mv "$rock" "$out/"
echo "$out/$rock"
