"""Trial outputs every node can reach, through Optuna's artifact store.

After a trial saves its SAE, the files of its folder are also uploaded with
`optuna.artifacts.upload_artifact` to a FileSystemArtifactStore (default
<results>/<study>/artifacts/; `--artifacts DIR` for a shared filesystem) or, for an s3:// URL, a
Boto3ArtifactStore. The artifact ids go into the trial's record, so a report on any node fetches
every trial's files with `optuna.artifacts.download_artifact`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import SaesweepError

if TYPE_CHECKING:  # optuna.artifacts imports boto3 where it is installed: loaded when used
    import optuna
    from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore

log = logging.getLogger("saesweep.artifacts")

# what a trial folder holds that another node needs to use the SAE
TRIAL_FILES = ("sae_weights.safetensors", "cfg.json", "history.json", "training_config.json",
               "meta.json")


class ArtifactError(SaesweepError, ValueError):
    """An artifact location that cannot be used (the message says why)."""


def default_location(results_dir: str | Path, study: str) -> str:
    return str((Path(results_dir) / study / "artifacts").resolve())


def s3_problem(location: str) -> str | None:
    """Why the S3 location cannot take a trial's files (no boto3, no credentials, no bucket, no
    right to write), found by a head-bucket and a put and delete of a probe object; None if it
    can."""
    try:
        import boto3
        import botocore.exceptions
    except ImportError:
        return "an S3 artifact store needs boto3 (pip install 'saesweep[s3]')"
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    key = f"{prefix.rstrip('/') + '/' if prefix else ''}.saesweep-probe"
    try:
        client = boto3.client("s3")
        client.head_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key=key, Body=b"")
        client.delete_object(Bucket=bucket, Key=key)
    except botocore.exceptions.NoCredentialsError:
        return "no AWS credentials (set AWS_ACCESS_KEY_ID / a profile, or use a shared folder)"
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        return f"cannot write there ({e})"
    return None


def open_artifact_store(location: str) -> FileSystemArtifactStore | Boto3ArtifactStore:
    """The artifact store at `location`: s3://bucket (boto3 needed) or a folder (created)."""
    from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore

    if location.startswith("s3://"):
        bucket = location.removeprefix("s3://").split("/", 1)[0]
        try:
            return Boto3ArtifactStore(bucket)
        except ImportError as e:
            raise ArtifactError(f"--artifacts {location}: an S3 artifact store needs boto3 "
                                "(pip install 'saesweep[s3]')") from e
    folder = Path(location)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArtifactError(f"--artifacts {location}: cannot create the folder "
                            f"({e.strerror or e})") from e
    return FileSystemArtifactStore(str(folder))


def upload_trial(trial: optuna.Trial, trial_dir: Path, location: str) -> dict[str, str]:
    """Upload a trial folder's files; returns {file name: artifact id} (empty on failure, which
    is logged: the local folder still has them)."""
    import optuna.artifacts

    ids: dict[str, str] = {}
    try:
        store = open_artifact_store(location)
        for name in TRIAL_FILES:
            path = trial_dir / name
            if path.exists():
                ids[name] = optuna.artifacts.upload_artifact(
                    artifact_store=store, file_path=str(path), study_or_trial=trial)
    except Exception as e:  # noqa: BLE001 - an unreachable store must not fail a trained trial
        log.warning("trial %d: artifacts not uploaded to %s: %s", trial.number, location, e)
        return {}
    return ids


def fetch_trial(ids: dict[str, str], location: str, into: Path) -> Path | None:
    """Download a trial's files into `into` (once); returns the folder, or None if they are
    not reachable there."""
    if "sae_weights.safetensors" not in ids:
        return None
    if all((into / name).exists() for name in ids):
        return into
    import optuna.artifacts
    from optuna.artifacts.exceptions import ArtifactNotFound

    try:
        store = open_artifact_store(location)
        into.mkdir(parents=True, exist_ok=True)
        for name, artifact_id in ids.items():
            target = into / name
            if not target.exists():
                optuna.artifacts.download_artifact(artifact_store=store, file_path=str(target),
                                                   artifact_id=artifact_id)
    except (ArtifactError, ArtifactNotFound, OSError) as e:
        log.info("artifacts %s not reachable at %s: %s", sorted(ids), location, e)
        return None
    return into
