from pix2pix.training.pairs import discover_pairs, split_for_key


def test_paired_folders_with_existing_split_are_kept():
    paths = ["train/sat/0001.jpg", "train/map/0001.png", "val/sat/0002.jpg", "val/map/0002.png"]
    pairs, skipped = discover_pairs(paths)
    assert [(p.split, p.key, p.source_path, p.target_path) for p in pairs] == [
        ("train", "0001", "train/sat/0001.jpg", "train/map/0001.png"),
        ("val", "0002", "val/sat/0002.jpg", "val/map/0002.png"),
    ]
    assert skipped == []


def test_unpaired_ambiguous_and_stray_files_are_reported():
    paths = ["sat/a.jpg", "map/a.png", "sat/b.jpg", "map/c.png", "sat/d.jpg", "sat/d.png", "map/d.png",
             "notes.txt", "other/e.jpg"]
    pairs, skipped = discover_pairs(paths, val_fraction=0.0)
    assert [p.key for p in pairs] == ["a"]
    reasons = {s.path: s.reason for s in skipped}
    assert "no matching file in map/" in reasons["sat/b.jpg"]
    assert "no matching file in sat/" in reasons["map/c.png"]
    assert "ambiguous" in reasons["sat/d.jpg"] and "ambiguous" in reasons["map/d.png"]
    assert reasons["notes.txt"] == "not an image file"
    assert "outside" in reasons["other/e.jpg"]


def test_direction_btoa_swaps_roles_and_nested_keys_are_kept():
    pairs, _ = discover_pairs(["sat/city/1.jpg", "map/city/1.png"], direction="BtoA", val_fraction=0.0)
    assert pairs[0].key == "city/1"
    assert pairs[0].source_path == "map/city/1.png" and pairs[0].target_path == "sat/city/1.jpg"


def test_side_by_side_layout_detected_and_direction_picks_the_half():
    paths = ["train/1.jpg", "train/2.jpg", "val/3.jpg", "test/4.jpg"]
    pairs, skipped = discover_pairs(paths)
    assert {(p.split, p.key, p.source_side) for p in pairs} == {
        ("train", "1", "left"), ("train", "2", "left"), ("val", "3", "left"), ("test", "4", "left")}
    pairs, _ = discover_pairs(paths, direction="BtoA")
    assert {p.source_side for p in pairs} == {"right"}


def test_hash_split_is_deterministic_and_near_the_fraction():
    keys = [f"{i:05d}" for i in range(4000)]
    splits = [split_for_key(k, 0.1) for k in keys]
    assert splits == [split_for_key(k, 0.1) for k in keys]
    assert 0.08 < splits.count("val") / len(keys) < 0.12
    pairs, _ = discover_pairs([f"{k}.jpg" for k in keys[:50]], val_fraction=0.1)
    assert {p.split for p in pairs} <= {"train", "val"}
    assert all(p.split == split_for_key(p.key, 0.1) for p in pairs)
