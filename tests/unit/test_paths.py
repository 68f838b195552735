"""File roots (shared/paths.py): what a project's FILE sources and exports may touch."""

from __future__ import annotations

import pytest

from shared.errors import FailedPrecondition, InvalidArgument
from shared.paths import FileRoots


@pytest.fixture
def tree(tmp_path):
    """data/{shop,blog}: project roots; offline/{shop,blog}: the offline store's parts."""
    for part in ("data/shop", "data/blog", "offline/shop/v", "offline/blog/v", "elsewhere"):
        (tmp_path / part).mkdir(parents=True)
    for part in ("data/shop/a.parquet", "offline/blog/v/x.parquet", "elsewhere/secret.parquet"):
        (tmp_path / part).write_text("x")
    return tmp_path


def roots(tree, **more):
    return FileRoots(
        {"shop": [str(tree / "data" / "shop")], **more},
        offline_store=str(tree / "offline"),
    )


def refused(call, reason="PATH_OUTSIDE_ROOTS"):
    with pytest.raises(InvalidArgument) as caught:
        call()
    assert caught.value.reason == reason
    return caught.value


def test_paths_inside_a_root_or_the_own_offline_store_are_readable(tree):
    policy = roots(tree)
    assert policy.readable(str(tree / "data/shop/a.parquet"), "shop", "f") == str(
        tree / "data/shop/a.parquet"
    )
    assert policy.readable("a.parquet", "shop", "f") == str(tree / "data/shop/a.parquet")
    assert policy.readable(str(tree / "data/shop/*/b.parquet"), "shop", "f")
    assert policy.readable(str(tree / "offline/shop/v"), "shop", "f")


def test_traversal_absolute_paths_outside_and_other_projects_are_refused(tree):
    policy = roots(tree)
    refused(lambda: policy.readable("../blog/x.parquet", "shop", "f"), "PATH_TRAVERSAL")
    refused(lambda: policy.readable(str(tree / "data/shop/../blog"), "shop", "f"), "PATH_TRAVERSAL")
    refused(lambda: policy.readable("/etc/passwd", "shop", "f"))
    refused(lambda: policy.readable(str(tree / "data/blog"), "shop", "f"))
    refused(lambda: policy.readable(str(tree / "offline/blog/v/x.parquet"), "shop", "f"))
    refused(lambda: policy.readable("s3://bucket/shop/x.parquet", "shop", "f"))
    error = refused(lambda: policy.readable("x.parquet", "blog", "data_source.file.path"))
    assert "RECSTACK_FILES__ROOTS" in error.message


def test_a_root_around_the_offline_store_does_not_grant_other_projects_parts(tree):
    policy = FileRoots({"*": [str(tree)]}, offline_store=str(tree / "offline"))
    assert policy.readable(str(tree / "elsewhere/secret.parquet"), "shop", "f")
    assert policy.readable(str(tree / "offline/shop/v"), "shop", "f")
    refused(lambda: policy.readable(str(tree / "offline/blog/v/x.parquet"), "shop", "f"))
    # Only a root inside the offline store grants another project's part of it.
    granted = roots(tree, shop=[str(tree / "offline" / "blog")])
    assert granted.readable(str(tree / "offline/blog/v/x.parquet"), "shop", "f")


def test_symbolic_links_that_leave_the_roots_are_refused(tree):
    policy = roots(tree)
    (tree / "data/shop/out").symlink_to(tree / "elsewhere")
    (tree / "data/shop/theirs").symlink_to(tree / "offline" / "blog")
    refused(lambda: policy.readable(str(tree / "data/shop/out/secret.parquet"), "shop", "f"))
    refused(lambda: policy.readable(str(tree / "data/shop/theirs"), "shop", "f"))
    # At read time every listed file is checked, whatever the path that listed it.
    with pytest.raises(FailedPrecondition) as caught:
        policy.check_file(str(tree / "data/shop/out/secret.parquet"), "shop", "source")
    assert caught.value.reason == "PATH_OUTSIDE_ROOTS"
    policy.check_file(str(tree / "data/shop/a.parquet"), "shop", "source")


def test_outputs_go_only_to_the_roots_never_to_the_offline_store(tree):
    policy = FileRoots({"*": [str(tree)]}, offline_store=str(tree / "offline"))
    assert policy.writable(str(tree / "data/shop/train.parquet"), "shop", "output_path")
    error = refused(lambda: policy.writable(str(tree / "offline/shop/v/t.parquet"), "shop", "o"))
    assert "offline store" in error.message


def test_templates_and_object_store_roots(tree):
    policy = FileRoots(
        {"shop": ["s3://bucket/shop"]},
        template=str(tree / "data" / "{project}"),
    )
    assert (
        policy.readable("s3://bucket/shop/x.parquet", "shop", "f") == "s3://bucket/shop/x.parquet"
    )
    refused(lambda: policy.readable("s3://bucket/shopping/x.parquet", "shop", "f"))
    assert policy.readable(str(tree / "data/blog"), "blog", "f")
