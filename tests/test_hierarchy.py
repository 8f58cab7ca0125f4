"""Class hierarchy, label sets and their YAML validation."""

import subprocess
import sys

import numpy as np
import pytest

from stardist_hier.hierarchy import ClassHierarchy, HierarchyError, default_hierarchy_path

GOOD = """\
hierarchy:
  nucleus:
    epi:
      healthy:
      malignant:
    immune:
      lymph:
      neutro:
    other:
label_sets:
  fine:
    1: healthy
    2: malignant
    3: lymph
  coarse:
    1: epi
    2: immune
  agnostic:
    1: nucleus
"""


def write(tmp_path, text, name="h.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_leaf_order_and_label_sets(tmp_path):
    h = ClassHierarchy.from_yaml(write(tmp_path, GOOD))
    assert h.root == "nucleus"
    assert h.leaves == ["healthy", "malignant", "lymph", "neutro", "other"]
    assert h.n_classes == 5
    assert h.leaf_channels("epi") == (1, 2)
    assert h.leaf_channels("nucleus") == (1, 2, 3, 4, 5)
    coarse = h.label_set("coarse")
    expected = np.zeros((3, 6), np.uint8)
    expected[0, 0] = 1
    expected[1, [1, 2]] = 1
    expected[2, [3, 4]] = 1
    np.testing.assert_array_equal(coarse.membership, expected)
    np.testing.assert_array_equal(coarse.leaf_group, [0, 1, 1, 2, 2, -1])
    assert coarse.n_label_classes == 3
    assert h.label_set("agnostic").membership[1].tolist() == [0, 1, 1, 1, 1, 1]


def test_collapse_sums_leaf_probabilities(tmp_path):
    h = ClassHierarchy.from_yaml(write(tmp_path, GOOD))
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(6), size=(4, 3))
    out = h.label_set("coarse").collapse(p)
    assert out.shape == (4, 3, 3)
    for idx in np.ndindex(4, 3):
        assert out[idx][0] == pytest.approx(p[idx][0])
        assert out[idx][1] == pytest.approx(p[idx][1] + p[idx][2])
        assert out[idx][2] == pytest.approx(p[idx][3] + p[idx][4])
    with pytest.raises(HierarchyError, match="channels"):
        h.label_set("coarse").collapse(np.ones((2, 4)))


def test_round_trip_yaml_and_dict(tmp_path):
    h = ClassHierarchy.from_yaml(write(tmp_path, GOOD))
    path = h.to_yaml(tmp_path / "out" / "copy.yaml")
    assert ClassHierarchy.from_yaml(path) == h
    assert ClassHierarchy.from_dict(h.to_dict()) == h
    assert not list((tmp_path / "out").glob(".*"))


def test_default_hierarchy_label_sets_follow_official_numbering():
    h = ClassHierarchy.default()
    assert default_hierarchy_path().exists()
    assert sorted(h.label_sets) == ["conic", "consep", "lizard", "monusac", "monuseg", "pannuke"]
    assert h.n_classes == len(h.leaves) == 12
    assert set(h.children[h.root]) == {"epithelial", "inflammatory", "connective", "other"}
    pannuke = h.label_set("pannuke").nodes
    assert pannuke == {1: "malignant_epithelial", 2: "inflammatory", 3: "connective", 4: "dead",
                       5: "healthy_epithelial"}
    assert h.label_set("monusac").nodes == {1: "epithelial", 2: "lymphocyte", 3: "neutrophil", 4: "macrophage"}
    consep = h.label_set("consep").nodes
    assert [consep[i] for i in range(1, 8)] == ["other", "inflammatory", "healthy_epithelial",
                                                "malignant_epithelial", "fibroblast", "muscle", "endothelial"]
    lizard = h.label_set("lizard").nodes
    assert [lizard[i] for i in range(1, 7)] == ["neutrophil", "epithelial", "lymphocyte", "plasma_cell",
                                                "eosinophil", "connective"]
    assert h.label_set("conic").nodes == lizard
    assert h.label_set("monuseg").nodes == {1: h.root}
    # every label set is a cut: its classes' leaf sets are disjoint
    for ls in h.label_sets.values():
        assert ls.membership[1:].sum(axis=0).max() <= 1
    # every leaf is reachable by some dataset label (leaf or through a super-class)
    covered = np.zeros(h.n_classes + 1, bool)
    for ls in h.label_sets.values():
        covered |= ls.membership[1:].any(axis=0).astype(bool)
    assert covered[1:].all()


BAD = {
    "unknown node": (GOOD.replace("3: lymph", "3: lymf"), r"line 14.*unknown node 'lymf'.*did you mean 'lymph'"),
    "duplicate node": (GOOD.replace("      neutro:", "      healthy:"), r"duplicate node name 'healthy'"),
    "duplicate sibling key": (GOOD.replace("      neutro:", "      lymph:"), r"line 8: duplicate key 'lymph'"),
    "ancestor in label set": (GOOD.replace("    3: lymph", "    3: epi"), r"'healthy' is under 'epi'.*mutually exclusive"),
    "class id twice": (GOOD.replace("    3: lymph", "    2: lymph"), r"line 14: duplicate key 2"),
    "non-integer id": (GOOD.replace("    3: lymph", "    three: lymph"), r"line 14.*label_sets.fine.three.*integers"),
    "float id": (GOOD.replace("    3: lymph", "    3.5: lymph"), r"integers"),
    "zero id": (GOOD.replace("    3: lymph", "    0: lymph"), r"0 is background"),
    "node used twice": (GOOD.replace("    3: lymph", "    3: malignant"), r"already used by class id 2"),
    "empty tree": ("hierarchy:\nlabel_sets: {}\n", r"'hierarchy' is empty"),
    "root without children": ("hierarchy:\n  nucleus:\n", r"no children"),
    "two roots": ("hierarchy:\n  a:\n    x:\n  b:\n    y:\n", r"exactly one root"),
    "malformed": (GOOD.replace("    epi:\n", "    epi: [\n"), r"line \d+, column \d+: malformed YAML"),
    "list node": (GOOD.replace("    other:", "    other: [a, b]"), r"'hierarchy.nucleus.other'.*mapping of children"),
    "unknown top key": (GOOD + "extra: 1\n", r"unknown top-level key"),
    "empty file": ("", r"the file is empty"),
    "empty label set": (GOOD + "  broken: {}\n", r"non-empty mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_yaml_names_file_and_key(tmp_path, case):
    text, pattern = BAD[case]
    path = write(tmp_path, text, name=f"{case.replace(' ', '_')}.yaml")
    with pytest.raises(HierarchyError, match=pattern) as err:
        ClassHierarchy.from_yaml(path)
    assert str(path) in str(err.value)


def test_missing_file_and_unknown_label_set(tmp_path):
    with pytest.raises(HierarchyError, match="not found"):
        ClassHierarchy.from_yaml(tmp_path / "nope.yaml")
    h = ClassHierarchy.default()
    with pytest.raises(HierarchyError, match=r"unknown label set 'monusak'.*monusac"):
        h.label_set("monusak")
    with pytest.raises(HierarchyError, match=r"class id\(s\) \[9\] not in label set 'monusac'"):
        h.label_set("monusac").check_class_ids([0, 1, 9], "mask x.tif")


def test_flat_hierarchy():
    h = ClassHierarchy.flat(3)
    assert h.n_classes == 3 and list(h.label_sets) == ["default"]
    np.testing.assert_array_equal(h.label_set("default").membership, np.eye(4, dtype=np.uint8))


def test_cli_prints_tree_and_reports_errors(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "stardist_hier.cli", "hierarchy"], capture_output=True, text=True)
    assert ok.returncode == 0 and "macrophage  (channel 7)  [monusac:4]" in ok.stdout
    bad = write(tmp_path, BAD["unknown node"][0])
    out = subprocess.run([sys.executable, "-m", "stardist_hier.cli", "hierarchy", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "unknown node 'lymf'" in out.stderr


def test_importing_hierarchy_does_not_import_tensorflow():
    code = "import stardist_hier, stardist_hier.hierarchy, sys; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the one class rule ------------------------------------------------------------------


def _classify_reference(prob, label_set, background):
    """Plain loop: sum the leaves of each class, take the largest (smallest id on ties)."""
    h = label_set.hierarchy
    out = []
    for row in prob:
        best, best_id = -1.0, None
        candidates = ([0] if background else []) + list(label_set.ids)
        for cid in candidates:
            leaves = [0] if cid == 0 else list(h.leaf_channels(label_set.nodes[cid]))
            total = sum(row[c] for c in leaves)
            if total > best:
                best, best_id = total, cid
        out.append(best_id)
    return np.array(out, np.int64)


@pytest.mark.parametrize("name", ["pannuke", "monusac", "consep", "monuseg", "lizard"])
def test_classify_matches_a_plain_loop(name):
    h = ClassHierarchy.default()
    ls = h.label_set(name)
    rng = np.random.default_rng(len(name))
    prob = rng.dirichlet(np.ones(h.n_classes + 1) * 0.3, size=200)
    prob[:5, 0] = 0.97  # background-dominated nuclei
    prob[:5, 1:] = 0.03 / h.n_classes
    for background in (False, True):
        np.testing.assert_array_equal(ls.classify(prob, background=background),
                                      _classify_reference(prob, ls, background))
    assert (ls.classify(prob) > 0).all()  # a detected nucleus never gets background
    assert (ls.classify(prob, background=True)[:5] == 0).all()
    assert ls.classify(np.zeros((0, h.n_classes + 1))).shape == (0,)


def test_classify_sums_before_the_argmax():
    h = ClassHierarchy.default()
    ls = h.label_set("pannuke")  # 2 = inflammatory (5 leaves), 1 = malignant epithelial
    prob = np.zeros((1, h.n_classes + 1))
    prob[0, h.leaf_index["malignant_epithelial"]] = 0.4
    prob[0, h.leaf_index["lymphocyte"]] = 0.3
    prob[0, h.leaf_index["neutrophil"]] = 0.3
    assert ls.classify(prob).tolist() == [2]
    assert h.leaf_label_set().classify(prob).tolist() == [h.leaf_index["malignant_epithelial"]]


def test_cut_by_depth():
    h = ClassHierarchy.default()
    assert h.cut(0).nodes == {1: "nucleus"}
    assert h.cut(1).nodes == {1: "epithelial", 2: "inflammatory", 3: "connective", 4: "other"}
    assert h.cut(h.max_depth).nodes == {i: leaf for leaf, i in h.leaf_index.items()}
    for depth in range(h.max_depth + 1):
        assert h.cut(depth).membership[1:].sum(axis=0)[1:].tolist() == [1] * h.n_classes  # a partition
    with pytest.raises(HierarchyError, match="0..2"):
        h.cut(3)
    assert h.ancestor_at("lymphocyte", 1) == "inflammatory" and h.ancestor_at("lymphocyte", 5) == "lymphocyte"


# -- extending the default, non-exhaustive label sets, colours ------------------------------


def test_extends_default_adds_nodes_label_sets_and_colours(tmp_path):
    path = write(tmp_path, """\
extends: default
add_nodes:
  inflammatory:
    mast_cell:
colors:
  mast_cell: [10, 20, 30]
label_sets:
  my_lab:
    1: epithelial
    2: mast_cell
    3: lymphocyte
""")
    h = ClassHierarchy.from_yaml(path)
    base = ClassHierarchy.default()
    assert h.n_classes == base.n_classes + 1
    assert h.children["inflammatory"][-1] == "mast_cell"
    assert set(h.label_sets) == set(base.label_sets) | {"my_lab"}
    assert h.color("mast_cell") == (10, 20, 30) and h.color("epithelial") == base.color("epithelial")
    assert h.label_set("my_lab").classify(np.eye(h.n_classes + 1)[[h.leaf_index["mast_cell"]]]).tolist() == [2]
    assert ClassHierarchy.from_dict(h.to_dict()) == h  # round trip without 'extends'
    # a relative path extends the file beside it
    child = write(tmp_path, "extends: h.yaml\nlabel_sets:\n  other_lab:\n    1: mast_cell\n", name="child.yaml")
    assert "other_lab" in ClassHierarchy.from_yaml(child).label_sets


@pytest.mark.parametrize("text, pattern", [
    ("extends: default\nlabel_sets:\n  monusac:\n    1: epithelial\n", r"'monusac' is already defined"),
    ("extends: default\nadd_nodes:\n  inflamatory:\n    x:\n", r"no node 'inflamatory'.*did you mean 'inflammatory'"),
    ("extends: default\nadd_nodes:\n  inflammatory:\n    lymphocyte:\n", r"'lymphocyte' already exists"),
    ("extends: default\nhierarchy:\n  a:\n    b:\n", r"cannot redefine 'hierarchy'"),
    ("extends: nowhere.yaml\n", r"not found"),
    ("extends: default\ncolors:\n  epithelial: red\n", r"colors.epithelial.*#rrggbb"),
    (GOOD + "  part:\n    1: lymph\n    unannotated: [immune]\n", r"'immune' overlaps the labelled node 'lymph'"),
    (GOOD + "  part:\n    1: lymph\n    unannotated: [epy]\n", r"unknown node 'epy'.*did you mean 'epi'"),
    (GOOD + "  part:\n    1: lymph\n    exhaustive: maybe\n", r"'exhaustive' is true or false"),
])
def test_bad_extensions_name_the_key(tmp_path, text, pattern):
    with pytest.raises(HierarchyError, match=pattern):
        ClassHierarchy.from_yaml(write(tmp_path, text))


def test_unannotated_nodes(tmp_path):
    h = ClassHierarchy.from_yaml(write(tmp_path, GOOD + "  part:\n    1: lymph\n    exhaustive: false\n"
                                                 "  listed:\n    1: epi\n    unannotated: [neutro]\n"))
    part = h.label_set("part")
    assert part.unannotated == ("epi", "neutro", "other") and not part.exhaustive
    assert part.unannotated_channels == (1, 2, 4, 5)
    assert h.label_set("fine").exhaustive
    listed = h.label_set("listed")
    prob = np.array([[0.1, 0.2, 0.1, 0.0, 0.6, 0.0],    # mostly neutro: set aside
                     [0.1, 0.5, 0.0, 0.0, 0.4, 0.0],    # mostly epi
                     [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])   # no foreground at all
    np.testing.assert_allclose(listed.unannotated_share(prob), [0.6 / 0.9, 0.4 / 0.9, 0.0])
    assert listed.is_unannotated(prob).tolist() == [True, False, False]
    assert ClassHierarchy.from_dict(h.to_dict()) == h
    assert ClassHierarchy.default().label_set("monusac").unannotated == (
        "plasma_cell", "eosinophil", "connective", "other")


def test_cli_label_set_shows_only_that_one():
    out = subprocess.run([sys.executable, "-m", "stardist_hier.cli", "hierarchy", "--label-set", "monusac"],
                         capture_output=True, text=True)
    assert out.returncode == 0
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("  ") and ":" in ln and "=" in ln]
    assert len(lines) == 1 and lines[0].startswith("  monusac:")
    bad = subprocess.run([sys.executable, "-m", "stardist_hier.cli", "hierarchy", "--label-set", "monusak"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "did you mean 'monusac'" in bad.stderr and "Traceback" not in bad.stderr
