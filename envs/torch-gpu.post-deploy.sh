#!/usr/bin/env bash
# Snakemake runs this once, inside the new env, right after creating it from the .yaml beside it
# (https://snakemake.readthedocs.io/en/stable/snakefiles/deployment.html#providing-post-deployment-scripts).
# It installs tissuekd without dependencies: the env file pins what this rule group imports, and
# pyproject.toml lists every group's packages (torch included), which a plain `pip install -e`
# (an env file's pip lines cannot say --no-deps) would pull into every env.
# Snakemake runs a copy (.snakemake/conda/<hash>.post-deploy.sh) from its working directory, so
# the checkout is not found beside this file: it is $TISSUEKD_ROOT, which workflow/rules/common.smk
# sets to the parent of workflow/, else the working directory. The install is editable, so an env
# shared between checkouts (--conda-prefix) runs the code of the checkout that created it.
set -euo pipefail
root="${TISSUEKD_ROOT:-$PWD}"
if ! grep -q '^name = "tissuekd"$' "$root/pyproject.toml" 2>/dev/null; then
    echo "post-deploy: $root is not the tissuekd checkout; set TISSUEKD_ROOT" >&2
    exit 1
fi
python -m pip install --no-deps -e "$root"
