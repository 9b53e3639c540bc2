"""``python -m backup_pipeline.cli``: the same CLI as the ``backup-pipeline`` script."""

from backup_pipeline.cli import main

main()
