"""``session diff`` and ``session merge`` with real git, a real server and the real CLI;
a merge that is refused leaves every branch, index and checkout as it was."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.server.helpers import Running, serve
from tests.sessions.helpers import cli, make_repo

pytestmark = [pytest.mark.anyio]

IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org"}
IDENTITY |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}


def git(repo: Path, *args: str) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": str(repo)} | IDENTITY
    done = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)
    return done.stdout.decode()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = make_repo(tmp_path / "repo")
    (path / "shared.txt").write_text("one\ntwo\nthree\n")
    git(path, "add", "shared.txt")
    git(path, "commit", "-qm", "shared")
    return path


def state(repo: Path, worktree: Path) -> tuple[str, ...]:
    """Everything a refused merge must leave alone."""
    return (
        git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        git(repo, "status", "--porcelain"),
        git(repo, "diff"),
        git(worktree, "status", "--porcelain"),
        git(worktree, "diff", "--cached"),
        (repo / "shared.txt").read_text(),
    )


async def _session(running: Running, repo: Path, name: str) -> Path:
    body = {"name": name, "agent": "shell", "repo": str(repo), "isolation": "worktree"}
    made = await running.post("/sessions", json=body)
    assert made.status_code == 201, made.text
    return Path(made.json()["cwd"])


async def test_diff_shows_committed_uncommitted_and_new_files(shome: Path, repo: Path) -> None:
    async with serve(shome) as running:
        wt = await _session(running, repo, "gd1")
        (wt / "shared.txt").write_text("one\nTWO\nthree\n")
        git(wt, "commit", "-qam", "agent edit")
        (wt / "new.txt").write_text("brand new\n")  # untracked
        (wt / "shared.txt").write_text("one\nTWO\nthree\nfour\n")  # uncommitted
        index_before = git(wt, "status", "--porcelain")
        got = (await running.get("/sessions/gd1/diff")).json()
        assert got["branch"] == "hivecell/gd1"
        assert got["base"] == git(repo, "rev-parse", "main").strip()
        assert {(f["status"], f["path"]) for f in got["files"]} == {
            ("M", "shared.txt"),
            ("A", "new.txt"),
        }
        assert "+TWO" in got["diff"] and "+four" in got["diff"] and "+brand new" in got["diff"]
        assert git(wt, "status", "--porcelain") == index_before  # the agent's index untouched
        shown = await cli(shome, running, "diff", "gd1")
        assert b"+brand new" in shown.stdout
        # A session without a branch has nothing to diff against.
        body = {"name": "gd2", "agent": "shell", "repo": str(repo), "isolation": "none"}
        assert (await running.post("/sessions", json=body)).status_code == 201
        refused = await running.get("/sessions/gd2/diff")
        assert refused.status_code == 422 and "worktree" in refused.json()["error"]["message"]
        await cli(shome, running, "destroy", "gd1", "--force")
        await cli(shome, running, "destroy", "gd2")


async def test_merge_commits_pending_work_and_brings_it_into_main(shome: Path, repo: Path) -> None:
    async with serve(shome) as running:
        wt = await _session(running, repo, "gm1")
        (wt / "feature.txt").write_text("done\n")
        (wt / "shared.txt").write_text("one\ntwo\nthree\nfour\n")
        before = state(repo, wt)
        refused = await running.post("/sessions/gm1/merge", json={})
        assert refused.status_code == 409 and "--commit" in refused.json()["error"]["message"]
        assert state(repo, wt) == before
        # Hooks (which an agent on the host could plant) do not run when hivecell merges.
        marker = repo.parent / "hook-ran"
        for hook in ("pre-commit", "post-commit", "pre-merge-commit", "post-merge"):
            path = repo / ".git" / "hooks" / hook
            path.write_text(f"#!/bin/sh\necho {hook} >> {marker}\n")
            path.chmod(0o755)
        git(repo, "commit", "-q", "--allow-empty", "-m", "hooks armed")
        assert marker.exists()  # they do run for a plain git commit
        marker.unlink()
        done = await cli(shome, running, "merge", "gm1", "--commit", "-m", "agent work")
        assert not marker.exists()
        assert b"hivecell/gm1 merged into main" in done.stdout
        assert (repo / "feature.txt").read_text() == "done\n"  # in the main checkout
        assert (repo / "shared.txt").read_text().endswith("four\n")
        assert git(repo, "log", "-1", "--format=%s", "hivecell/gm1").strip() == "agent work"
        head = git(repo, "log", "-1", "--format=%s%n%P", "main").splitlines()
        assert head[0].startswith("Merge session gm1") and len(head[1].split()) == 2
        assert git(repo, "status", "--porcelain") == ""
        assert git(wt, "status", "--porcelain") == ""
        audit = (await running.get("/sessions/gm1/audit")).json()["items"]
        assert any(e["action"] == "merge" and e["target"] == "main" for e in audit)
        # Into a branch nobody has checked out: the ref moves, the main checkout does not.
        git(repo, "branch", "release", "main~1")
        (wt / "more.txt").write_text("more\n")
        git(wt, "add", "more.txt")
        git(wt, "commit", "-qm", "more")
        got = await running.post("/sessions/gm1/merge", json={"into": "release"})
        assert got.status_code == 200, got.text
        assert "more.txt" in git(repo, "ls-tree", "--name-only", "release")
        assert not (repo / "more.txt").exists()
        bad = await running.post("/sessions/gm1/merge", json={"into": "../main"})
        assert bad.status_code == 422
        gone = await cli(shome, running, "destroy", "gm1")
        assert b"branch hivecell/gm1 kept" in gone.stdout
        assert git(repo, "rev-parse", "--verify", "hivecell/gm1").strip()


async def test_merge_refuses_a_dirty_checkout_and_a_conflict_changing_nothing(
    shome: Path, repo: Path
) -> None:
    async with serve(shome) as running:
        wt = await _session(running, repo, "gm2")
        (wt / "shared.txt").write_text("one\nAGENT\nthree\n")
        # The main checkout has uncommitted changes of its own.
        (repo / "shared.txt").write_text("one\ntwo\nthree\nlocal\n")
        before = state(repo, wt)
        refused = await running.post("/sessions/gm2/merge", json={"commit": True})
        assert refused.status_code == 409, refused.text
        assert "uncommitted changes" in refused.json()["error"]["message"]
        assert state(repo, wt) == before
        cli_refused = await cli(shome, running, "merge", "gm2", "--commit", check=False)
        assert cli_refused.returncode == 2 and b"commit or stash" in cli_refused.stderr
        assert state(repo, wt) == before

        # Now a conflict: main changed the same line meanwhile.
        git(repo, "checkout", "-q", "--", "shared.txt")
        (repo / "shared.txt").write_text("one\nMAIN\nthree\n")
        git(repo, "commit", "-qam", "main edit")
        before = state(repo, wt)
        refused = await running.post("/sessions/gm2/merge", json={"commit": True})
        assert refused.status_code == 409, refused.text
        message = refused.json()["error"]["message"]
        assert "conflicts in shared.txt" in message and "nothing was changed" in message
        assert state(repo, wt) == before
        assert not (repo / ".git" / "MERGE_HEAD").exists()
        await cli(shome, running, "destroy", "gm2", "--force")
