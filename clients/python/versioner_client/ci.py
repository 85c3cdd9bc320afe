"""Who deployed what from where, read from the CI system's own environment.

A pipeline step should need nothing but ``versioner record --product P
--version V --env E --status success``: the actor, commit, branch and build link
are already in the environment of every major CI system. Pure functions over a
mapping, so they are tested without touching os.environ.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

ORIGIN_FIELDS = ("deployed_by", "scm_sha", "scm_branch", "build_url")


@dataclass(frozen=True)
class Origin:
    """Where a deployment comes from; empty strings where unknown."""

    deployed_by: str = ""
    scm_sha: str = ""
    scm_branch: str = ""
    build_url: str = ""
    system: str = ""  # "github", "gitlab", "jenkins", "circleci" or "" for none


def _get(env: Mapping[str, str], *names: str) -> str:
    """The first non-empty value among ``names``."""
    for name in names:
        value = (env.get(name) or "").strip()
        if value:
            return value
    return ""


def _github(env: Mapping[str, str]) -> Origin:
    server = _get(env, "GITHUB_SERVER_URL") or "https://github.com"
    repository, run_id = _get(env, "GITHUB_REPOSITORY"), _get(env, "GITHUB_RUN_ID")
    return Origin(
        deployed_by=_get(env, "GITHUB_ACTOR"),
        scm_sha=_get(env, "GITHUB_SHA"),
        # On pull requests GITHUB_REF_NAME is "<n>/merge"; the head branch is the real one.
        scm_branch=_get(env, "GITHUB_HEAD_REF", "GITHUB_REF_NAME"),
        build_url=f"{server.rstrip('/')}/{repository}/actions/runs/{run_id}"
        if repository and run_id
        else "",
        system="github",
    )


def _gitlab(env: Mapping[str, str]) -> Origin:
    return Origin(
        deployed_by=_get(env, "GITLAB_USER_LOGIN"),
        scm_sha=_get(env, "CI_COMMIT_SHA"),
        scm_branch=_get(env, "CI_COMMIT_REF_NAME"),
        build_url=_get(env, "CI_JOB_URL", "CI_PIPELINE_URL"),
        system="gitlab",
    )


def _jenkins(env: Mapping[str, str]) -> Origin:
    branch = _get(env, "GIT_BRANCH", "BRANCH_NAME")
    for prefix in ("refs/remotes/origin/", "remotes/origin/", "origin/", "refs/heads/"):
        if branch.startswith(prefix):
            branch = branch.removeprefix(prefix)
            break
    return Origin(
        deployed_by=_get(env, "BUILD_USER_ID", "BUILD_USER"),
        scm_sha=_get(env, "GIT_COMMIT"),
        scm_branch=branch,
        build_url=_get(env, "BUILD_URL"),
        system="jenkins",
    )


def _circleci(env: Mapping[str, str]) -> Origin:
    return Origin(
        deployed_by=_get(env, "CIRCLE_USERNAME"),
        scm_sha=_get(env, "CIRCLE_SHA1"),
        scm_branch=_get(env, "CIRCLE_BRANCH"),
        build_url=_get(env, "CIRCLE_BUILD_URL"),
        system="circleci",
    )


def detect_ci(env: Mapping[str, str]) -> Origin:
    """The Origin described by a CI system's variables, or an empty Origin outside CI."""
    if _get(env, "GITHUB_ACTIONS").lower() == "true":
        return _github(env)
    if _get(env, "GITLAB_CI"):
        return _gitlab(env)
    if _get(env, "JENKINS_URL"):
        return _jenkins(env)
    if _get(env, "CIRCLECI"):
        return _circleci(env)
    return Origin()


def resolve_origin(
    flags: Mapping[str, str | None], env: Mapping[str, str], default_user: str = ""
) -> Origin:
    """Each origin field from, in order: the flag, VERSIONER_<FIELD>, CI detection, default.

    Empty environment variables count as unset (CI systems often define them empty).
    ``flags`` maps field names to the command-line value (None when not given);
    an explicit empty flag (``--scm-sha ""``) wins, to let a caller blank a field.
    ``default_user`` fills deployed_by when nothing else does (the local user).
    """
    detected = detect_ci(env)
    values: dict[str, str] = {}
    for name in ORIGIN_FIELDS:
        flag = flags.get(name)
        if flag is not None:
            values[name] = flag
        else:
            values[name] = _get(env, f"VERSIONER_{name.upper()}") or getattr(detected, name)
    if not values["deployed_by"] and flags.get("deployed_by") is None:
        values["deployed_by"] = default_user
    return replace(detected, **values)
