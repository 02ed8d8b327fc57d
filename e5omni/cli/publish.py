"""`e5omni push FOLDER --repo-id ID ...`: the command line of `e5omni.publish`."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from e5omni.publish import (
    DEFAULT_COMMIT_MESSAGE,
    PublishError,
    push_folder,
    redact,
    resolve_token,
    verify_folder,
    verify_push,
)


def add_push_parser(subparsers) -> argparse.ArgumentParser:
    """Add `e5omni push FOLDER --repo-id ID ...` to a `argparse` subparsers object."""
    p = subparsers.add_parser(
        "push",
        help="publish a saved model folder to the Hub in one atomic commit (or --dry-run it)",
        description=(
            "Publish FOLDER (weights, code, processor, sentence-transformers files) plus calibration.json, "
            "manifest.json and the model card in one commit. Pickles and code referencing other repos are refused."
        ),
    )
    p.add_argument("folder", help="a folder written by save_hub_folder / e5omni convert / the trainer")
    p.add_argument("--repo-id", required=True, help="owner/name on the Hub")
    p.add_argument("--revision", default=None, help="branch to commit to (default main; created when missing)")
    p.add_argument("--private", action="store_true", help="create the repo private (refused if it exists public)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing directly")
    p.add_argument(
        "--token",
        default=None,
        help="Hub token; prefer the HF_TOKEN environment variable (a command-line token shows in ps and history)",
    )
    p.add_argument("--dry-run", metavar="DIR", default=None, help="write the staged commit to DIR; send nothing")
    p.add_argument("--commit-message", default=DEFAULT_COMMIT_MESSAGE)
    p.add_argument(
        "--card-context",
        metavar="JSON",
        default=None,
        help="JSON file with model-card context: metrics, training, loss, base_model, datasets, eval_dataset, ...",
    )
    p.add_argument(
        "--keep-stale-files", action="store_true", help="keep files of the target revision that are not in FOLDER"
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="reload what was committed (downloads the commit; with --dry-run, the staged DIR) and compare embeddings",
    )
    p.add_argument(
        "--space",
        metavar="SPACE_ID",
        default=None,
        help="also publish a search Space (owner/name) for the model, in its own single commit, and link it from "
        "the model card; with --dry-run DIR the model goes to DIR/model and the Space to DIR/space",
    )
    p.add_argument(
        "--space-corpus",
        metavar="FOLDER",
        default=None,
        help="the Space's corpus: a folder of images / audio / video / .txt (default: the bundled demo corpus)",
    )
    p.add_argument(
        "--space-wheel",
        metavar="WHEEL",
        default=None,
        help="the e5-omni wheel the Space installs (its version must be this package's; default: $E5OMNI_SPACE_WHEEL, "
        "else built from this install's source)",
    )
    p.add_argument(
        "--vllm",
        action="store_true",
        help="also publish the served form (e5omni export --format vllm) to its own repo, REPO_ID-vllm (or "
        "--vllm-repo-id), in its own commit after the model's, pointing at the model commit; with --dry-run DIR the "
        "model goes to DIR/model and the export to DIR/vllm (docs/serving.md)",
    )
    p.add_argument("--vllm-repo-id", default=None, help="the export's repo (default: REPO_ID-vllm); needs --vllm")
    p.add_argument(
        "--vllm-dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="cast the exported weights (default: the model's dtype); needs --vllm",
    )
    p.set_defaults(func=run_push_command)
    return p


def run_push_command(args: argparse.Namespace) -> int:
    """The `e5omni push` command. Returns 0 on success, 1 on a failed verification, 2 on a refused push."""
    context = None
    if args.card_context:
        context = json.loads(Path(args.card_context).read_text(encoding="utf-8"))
        if not isinstance(context, dict):
            print("push: --card-context must hold a JSON object", file=sys.stderr)
            return 2
    token = args.token
    for flag, value in (("--space-corpus", args.space_corpus), ("--space-wheel", args.space_wheel)):
        if value and not args.space:
            print(f"push: {flag} needs --space", file=sys.stderr)
            return 2
    for flag, value in (("--vllm-repo-id", args.vllm_repo_id), ("--vllm-dtype", args.vllm_dtype)):
        if value and not args.vllm:
            print(f"push: {flag} needs --vllm", file=sys.stderr)
            return 2
    model_dry_run, space_dry_run, vllm_dry_run = args.dry_run, None, None
    if args.space:
        context = {**(context or {}), "space_id": args.space}
    if args.dry_run and (args.space or args.vllm):
        model_dry_run = str(Path(args.dry_run) / "model")
        space_dry_run = str(Path(args.dry_run) / "space") if args.space else None
        vllm_dry_run = str(Path(args.dry_run) / "vllm") if args.vllm else None
    with tempfile.TemporaryDirectory(prefix="e5omni-vllm-") as scratch:
        return _push(args, context, token, model_dry_run, space_dry_run, vllm_dry_run, Path(scratch))


def _push(args, context, token, model_dry_run, space_dry_run, vllm_dry_run, scratch: Path) -> int:
    try:
        export_dir = None
        if args.vllm:  # exported (and checked) before anything is sent: a model vLLM cannot serve stops both pushes
            from e5omni.export import ExportError
            from e5omni.export.to_vllm import export_vllm_from
            from e5omni.publish.push import stage_vllm_export, vllm_repo_id

            vllm_repo = args.vllm_repo_id or vllm_repo_id(args.repo_id)
            try:
                export_dir = export_vllm_from(args.folder, scratch / "export", dtype=args.vllm_dtype)
            except ExportError as error:
                print(f"push: --vllm: {error}", file=sys.stderr)
                return 2
            stage_vllm_export(export_dir, repo_id=vllm_repo, model_repo_id=args.repo_id, token=resolve_token(token))
        staged_space = None
        if args.space:  # staged (and checked) before anything is sent, so a bad corpus stops both pushes
            from e5omni.publish.space import stage_space

            staged_space = stage_space(
                args.space,
                args.repo_id,
                model_folder=args.folder,
                revision=args.revision or "main",
                corpus=args.space_corpus,
                token=token,
                wheel=args.space_wheel,
            )
        result = push_folder(
            args.folder,
            args.repo_id,
            revision=args.revision,
            private=args.private,
            create_pr=args.create_pr,
            token=token,
            commit_message=args.commit_message,
            dry_run_dir=model_dry_run,
            model_card_context=context,
            delete_stale=not args.keep_stale_files,
        )
        if staged_space is not None:
            from e5omni.publish.space import push_space

            if result.commit_oid:  # the Space loads exactly the commit just pushed
                staged_space = stage_space(
                    args.space,
                    args.repo_id,
                    model_folder=args.folder,
                    revision=result.commit_oid,
                    corpus=args.space_corpus,
                    token=token,
                    wheel=args.space_wheel,
                )
            push_space(staged_space, args.space, private=args.private, token=token, dry_run_dir=space_dry_run)
        if export_dir is not None:
            from e5omni.publish.push import push_vllm_export

            push_vllm_export(
                export_dir,
                vllm_repo,
                model_repo_id=args.repo_id,
                model_revision=result.commit_oid,
                private=args.private,
                token=token,
                dry_run_dir=vllm_dry_run,
            )
        if args.verify:
            if result.dry_run:
                verified = verify_folder(args.folder, result.dry_run_dir)
            else:
                verified = verify_push(args.folder, result.repo_id, result.commit_oid, token=token)
            return 0 if verified.ok else 1
    except PublishError as err:
        print(f"push: {redact(str(err), resolve_token(token))}", file=sys.stderr)
        return 2
    return 0
