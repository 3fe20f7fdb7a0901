#!/usr/bin/env bash
# Builds the Go programs the test suite runs, each at most once per set of
# inputs:
#   kubenas-testcluster  real kube-apiserver + etcd (+ controller-manager and
#                        scheduler), from tests/kube/testcluster
#   helm                 Helm v3, from its Go module at a pinned version
# Each lands in $KUBENAS_CACHE/bin (default ~/.cache/kubenas/bin) as
# NAME-<key>, where <key> hashes everything that goes into it (sources,
# go.mod/go.sum, `go version`, flags, pinned version), with a stable symlink
# NAME -> NAME-<key>. A build is skipped when its keyed file already exists.
# Exits non-zero when a build fails.
set -euo pipefail

HELM_VERSION=v3.22.0

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${KUBENAS_CACHE:-$HOME/.cache/kubenas}"
BIN="$CACHE/bin"
TESTCLUSTER_SRC="$ROOT/tests/kube/testcluster"

GO="${GO:-}"
if [[ -z "$GO" ]]; then
    if command -v go >/dev/null 2>&1; then GO=go
    elif [[ -x /usr/local/go/bin/go ]]; then GO=/usr/local/go/bin/go
    else echo "build-go-tools: no Go toolchain found (set GO=/path/to/go)" >&2; exit 1
    fi
fi
GO_VERSION="$("$GO" version)"
mkdir -p "$BIN"

# key12 < inputs: first 12 hex digits of the SHA-256 of stdin.
key12() { sha256sum | cut -c1-12; }

# publish NAME KEYED_FILE: point the stable symlink at the keyed file,
# atomically (rename over the old link).
publish() {
    ln -sfn "$(basename "$2")" "$BIN/.$1.link.$$"
    mv -Tf "$BIN/.$1.link.$$" "$BIN/$1"
}

# prune NAME: keep the three newest keyed builds of NAME (other checkouts
# may use older keys), delete the rest; they are 80-120 MB each.
prune() {
    find "$BIN" -maxdepth 1 -type f -regextype posix-extended \
        -regex ".*/$1-[0-9a-f]{12}" -printf '%T@ %p\n' |
        sort -rn | tail -n +4 | cut -d' ' -f2- | xargs -r rm -f
}

status=0

# --- kubenas-testcluster ---------------------------------------------------
# Stamp the Kubernetes version the module pins into the binary, as release
# builds do; otherwise /version says v0.0.0-master and tools that check the
# server version (helm's kubeVersion, kubectl skew warnings) are misled.
K8S_VERSION="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$TESTCLUSTER_SRC/go.mod")"
if [[ -z "$K8S_VERSION" ]]; then
    echo "build-go-tools: cannot find the k8s.io/kubernetes version in $TESTCLUSTER_SRC/go.mod" >&2
    exit 1
fi
K8S_MINOR="$(echo "$K8S_VERSION" | cut -d. -f2)"
VPKG=k8s.io/component-base/version
LDFLAGS="-s -w -X $VPKG.gitVersion=$K8S_VERSION -X $VPKG.gitMajor=1 -X $VPKG.gitMinor=$K8S_MINOR -X $VPKG.gitTreeState=clean"

tc_key="$(
    {
        echo "$GO_VERSION"
        echo "ldflags: $LDFLAGS"
        cd "$TESTCLUSTER_SRC"
        # Not -trimpath: the binary must keep real source paths.
        for f in go.mod go.sum $(find . -name '*.go' | LC_ALL=C sort); do
            echo "== $f"
            cat "$f"
        done
    } | key12
)"
# build NAME PACKAGE: one binary of the test-cluster module under the shared key.
build() {
    local name=$1 pkg=$2 out="$BIN/$1-$tc_key" start=$SECONDS
    if [[ -x "$out" ]]; then
        echo "build-go-tools: $name up to date ($tc_key)"
    else
        echo "build-go-tools: building $name (Kubernetes $K8S_VERSION, key $tc_key); from cold this takes a while" >&2
        if (cd "$TESTCLUSTER_SRC" && "$GO" build -ldflags "$LDFLAGS" -o "$out.tmp.$$" "$pkg"); then
            mv -f "$out.tmp.$$" "$out"
            echo "build-go-tools: built $name in $((SECONDS - start))s" >&2
        else
            rm -f "$out.tmp.$$"
            echo "build-go-tools: FAILED to build $name" >&2
            status=1
            return
        fi
    fi
    publish "$name" "$out" && prune "$name"
}
build kubenas-testcluster .
# kubectl from the same pinned release: the suite does not rely on a kubectl the machine may lack.
build kubectl ./cmd/kubectl

# --- helm --------------------------------------------------------------------
HELM_PKG=helm.sh/helm/v3/cmd/helm
HELM_LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
helm_key="$(printf '%s\n' "$GO_VERSION" "$HELM_PKG@$HELM_VERSION" "ldflags: $HELM_LDFLAGS" | key12)"
helm_bin="$BIN/helm-$helm_key"
if [[ -x "$helm_bin" ]]; then
    echo "build-go-tools: helm up to date ($helm_key)"
else
    echo "build-go-tools: building helm $HELM_VERSION (key $helm_key)" >&2
    start=$SECONDS
    gobin="$(mktemp -d "$BIN/.helm-build.XXXXXX")"
    # `go install pkg@version` builds with helm's own go.mod; a -mod setting
    # in the caller's GOFLAGS would make it refuse, so clear GOFLAGS.
    if GOFLAGS= GOBIN="$gobin" "$GO" install -ldflags "$HELM_LDFLAGS" "$HELM_PKG@$HELM_VERSION"; then
        mv -f "$gobin/helm" "$helm_bin"
        echo "build-go-tools: built helm in $((SECONDS - start))s" >&2
    else
        echo "build-go-tools: FAILED to build helm $HELM_VERSION" >&2
        status=1
    fi
    rm -rf "$gobin"
fi
[[ -x "$helm_bin" ]] && publish helm "$helm_bin" && prune helm

if [[ $status -ne 0 ]]; then
    exit "$status"
fi
echo "build-go-tools: tools in $BIN:"
echo "  kubenas-testcluster -> $(readlink "$BIN/kubenas-testcluster")  (Kubernetes $K8S_VERSION)"
echo "  kubectl             -> $(readlink "$BIN/kubectl")  (Kubernetes $K8S_VERSION)"
echo "  helm                -> $(readlink "$BIN/helm")  (Helm $HELM_VERSION)"
