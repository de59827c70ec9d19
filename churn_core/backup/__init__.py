"""Backups of every store and restores into empty ones; Delta time travel for one table.

Layout of one backup under ``backup.root`` (a local folder or any pyarrow file system)::

    <id>/                          20261127T093015Z-3fa9 (UTC start time + 4 random hex digits)
      manifest.json                every file with size + sha256, Delta versions, registry
                                   versions and aliases, dumps, code version, tool version
      manifest.json.sha256         the manifest's own checksum
      manifest.json.seal           encrypted backups only: that checksum under the key
      delta/<table>/...            each Delta table at one version, self-contained
      postgres/<db>_<host>_<port>.dump    pg_dump --format=custom
      mongodb/<role>/<collection>.jsonl   canonical extended JSON, + .indexes.json
      registry/<model>/...         JSON-files registry metadata (when metadata is files)
      artifacts/<model>/versions/<n>/...  every file of every model version
      configs/...                  the configuration folder, secrets redacted

A backup is written as ``.incomplete-<id>/`` and renamed when its manifest is in. With
``encryption.backups`` every file but the manifest is stored encrypted (``churn_core.encryption``).
Modules: :mod:`.create` (``churn backup``), :mod:`.restore` (``churn restore``),
:mod:`.time_travel` (``churn restore-table``), one module per store, :mod:`.storage`,
:mod:`.manifest`, :mod:`.retention`.
"""
