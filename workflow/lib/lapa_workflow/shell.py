"""Shell snippets the rules append to their commands (Snakemake fills in the placeholders)."""

# After a training command: copy the CSV logs of its work folder ({params.workdir}) into the
# rule's declared `logs` output, keeping their relative paths (a resumed run may hold several),
# through a temporary folder and a rename, so the curves never read the scratch folder.
COPY_CSV_LOGS = (
    'dest="$PWD/{output.logs}.tmp"; rm -rf "$dest"; mkdir -p "$dest"; '
    "(cd {params.workdir} && find . -name '*.csv' -exec cp --parents '{{}}' \"$dest\" ';'); "
    'rm -rf {output.logs}; mv "$dest" {output.logs}'
)
