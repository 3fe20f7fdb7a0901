#!/usr/bin/env bash
# Build and push the three kubenas images to a registry of yours (./dev images REGISTRY [TAG]).
#
# Uses the first builder that works here: docker or podman (with a reachable daemon or
# socket), buildah. With none (or with
# KUBENAS_IMAGES_PRINT=1) it prints the commands instead, for docker, buildah and kaniko,
# so they can run where a builder is (a CI job, a build pod).
# Then it prints the `helm install` that uses the pushed images.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: ./dev images REGISTRY [TAG]   e.g. ./dev images registry.example.com/ml 0.1.0" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
registry=${1%/}
tag=${2:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' helm/kubenas/Chart.yaml)}
# A registry is host[:port][/path]; a tag is Docker's [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
[[ $registry =~ ^[A-Za-z0-9][A-Za-z0-9.:-]*(/[a-z0-9._-]+)*$ ]] || { echo "REGISTRY: '$registry' is not host[:port][/path]" >&2; exit 2; }
[[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || { echo "TAG: '$tag' is not a valid image tag" >&2; exit 2; }

# image name -> Dockerfile (the build context is always the repository root)
images=("operator:operator/Dockerfile" "controller:controller_image/Dockerfile" "trainer:trainer_image/Dockerfile")

builder=""
if [ "${KUBENAS_IMAGES_PRINT:-0}" != 1 ]; then
  # A docker CLI without its daemon is common (CI runners, this project's dev machines): ask it.
  for candidate in docker podman buildah; do
    if command -v "$candidate" >/dev/null 2>&1 && timeout 20 "$candidate" info >/dev/null 2>&1; then
      builder=$candidate; break
    fi
  done
fi

build_commands() {  # build_commands BUILDER: the build-and-push commands, one per line
  local name file ref
  for entry in "${images[@]}"; do
    name=${entry%%:*}; file=${entry#*:}; ref="$registry/kubenas-$name:$tag"
    case $1 in
      docker|podman) echo "$1 build -f $file -t $ref . && $1 push $ref" ;;
      buildah) echo "buildah bud -f $file -t $ref . && buildah push $ref" ;;
      kaniko) echo "/kaniko/executor --context dir://\$PWD --dockerfile $file --destination $ref" ;;
    esac
  done
}

if [ -n "$builder" ]; then
  echo "==> building with $builder and pushing to $registry (tag $tag)" >&2
  while IFS= read -r command; do
    echo "+ $command" >&2
    bash -c "$command"
  done < <(build_commands "$builder")
else
  cat <<EOF
# No image builder (docker, podman, buildah) on this machine: nothing was built.
# Run these from the repository root where one is installed (log in to $registry first).

# With Docker (or podman: the same commands with podman):
$(build_commands docker)

# With buildah (daemonless, e.g. in a CI job without Docker):
$(build_commands buildah)

# With kaniko (in a cluster: a pod of gcr.io/kaniko-project/executor with this repository
# at its working directory and the registry's credentials in /kaniko/.docker/config.json):
$(build_commands kaniko)
EOF
fi

cat <<EOF

# Then install the chart with these images:
helm install kubenas helm/kubenas --namespace kubenas-system --create-namespace \\
  --set image.operator.repository=$registry/kubenas-operator \\
  --set image.controller.repository=$registry/kubenas-controller \\
  --set image.trainer.repository=$registry/kubenas-trainer \\
  --set image.operator.tag=$tag --set image.controller.tag=$tag --set image.trainer.tag=$tag
EOF
