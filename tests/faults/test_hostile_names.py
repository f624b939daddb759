"""Names that come from users or data never become paths outside their root (issue 14: hostile names)."""

from __future__ import annotations

import pytest

from dfkd.errors import UserError
from dfkd.toydata import main as toydata_main
from dfkd.toydata import write_domainbed


@pytest.mark.parametrize("classes, domains", [(["dog", "../../evil"], ("photo",)), (["dog", "a/b"], ("photo",)),
                                              (["dog"], ("../up",)), (["dog", ".."], ("photo",))])
def test_the_toy_writer_refuses_a_name_that_is_a_path_before_writing_anything(tmp_path, classes, domains):
    root = tmp_path / "nest" / "root"
    with pytest.raises(UserError, match="cannot be a folder name"):
        write_domainbed(root, classes, domains=domains, per_class=1, size=16)
    assert not (tmp_path / "nest").exists()
    with pytest.raises(SystemExit) as exit_info:  # the command line: one line, exit code 2
        toydata_main([str(root), "--classes", ",".join(classes), "--domains", ",".join(domains), "--per-class", "1"])
    assert exit_info.value.code == 2 and not (tmp_path / "nest").exists()


def test_plain_names_with_spaces_are_written_as_folders_inside_the_root(tmp_path):
    write_domainbed(tmp_path, ["hot dog", "cat"], domains=("photo",), per_class=1, size=16)
    assert sorted(p.name for p in (tmp_path / "photo").iterdir()) == ["cat", "hot_dog"]
