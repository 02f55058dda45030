"""Shell snippets the rules append to their commands (Snakemake fills in the placeholders)."""

# After a training command: copy the CSV logs of its run into the rule's declared `logs` output,
# keeping their relative paths (a resumed run may hold several), through a temporary folder and a
# rename, so the curves never read the scratch folder. The run is the one `current.json` in the
# work folder ({params.workdir}) names (lapa.utils.run: one folder per run identity, so a work
# folder may also hold runs of earlier inputs); without it, the whole work folder.
COPY_CSV_LOGS = (
    'src={params.workdir}; dest="$PWD/{output.logs}.tmp"; '
    'if [ -f "$src/current.json" ]; then '
    'run=$(sed -n \'s/.*"run": *"\\([^"]*\\)".*/\\1/p\' "$src/current.json" | head -n 1); '
    'src="$src/$run"; fi; '
    'rm -rf "$dest"; mkdir -p "$dest"; '
    "(cd \"$src\" && find . -name '*.csv' -exec cp --parents '{{}}' \"$dest\" ';'); "
    'rm -rf {output.logs}; mv "$dest" {output.logs}'
)
