"""Official annotation layouts -> list files, on small fake trees (prepare only reads
annotations and checks that videos exist, so empty placeholder files will do)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from training import prepare


def touch(root: Path, *paths: str) -> None:
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())  # bytes, so CRLF endings stay as written


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ----------------------------------------------------------------------------- UCF-101
@pytest.fixture
def ucf(tmp_path) -> Path:
    touch(
        tmp_path,
        "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        # The archive's folder is `HandstandPushups`, its files `v_HandStandPushups_*`.
        "UCF-101/HandstandPushups/v_HandStandPushups_g08_c01.avi",
        "UCF-101/HandstandPushups/v_HandStandPushups_g01_c01.avi",
        "UCF-101/YoYo/v_YoYo_g08_c01.avi",
    )  # v_YoYo_g01_c01.avi (a test video) is missing
    lists = tmp_path / "ucfTrainTestlist"
    write(lists / "classInd.txt", "1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n3 YoYo\r\n")
    write(
        lists / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        "HandStandPushups/v_HandStandPushups_g08_c01.avi 2\r\n"
        "YoYo/v_YoYo_g08_c01.avi 3\r\n",
    )
    write(
        lists / "testlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n"
        "HandstandPushups/v_HandstandPushups_g01_c01.avi\r\n"
        "YoYo/v_YoYo_g01_c01.avi\r\n\r\n",
    )
    return tmp_path


def test_ucf101_lists(ucf):
    lists = prepare.prepare("ucf101", ucf)
    assert read_lines(ucf / "classes.txt") == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    # Paths take the case found on disk; labels follow classInd.txt, 0-based.
    assert read_lines(ucf / "lists/train.txt") == [
        "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 0",
        "UCF-101/HandstandPushups/v_HandStandPushups_g08_c01.avi 1",
        "UCF-101/YoYo/v_YoYo_g08_c01.avi 2",
    ]
    assert read_lines(ucf / "lists/val.txt") == [
        "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 0",
        "UCF-101/HandstandPushups/v_HandStandPushups_g01_c01.avi 1",
    ]
    assert lists.missing == {"train": [], "val": ["UCF-101/YoYo/v_YoYo_g01_c01.avi"]}


def test_ucf101_train_label_must_match_its_folder(ucf):
    write(ucf / "ucfTrainTestlist/trainlist01.txt", "YoYo/v_YoYo_g08_c01.avi 1\r\n")
    with pytest.raises(ValueError, match="has label 1 but its folder is class 3"):
        prepare.read_ucf101(ucf)


@pytest.mark.parametrize("name", ["classInd.txt", "trainlist01.txt", "testlist01.txt"])
def test_ucf101_missing_annotation_names_its_path(ucf, name):
    (ucf / "ucfTrainTestlist" / name).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(ucf / "ucfTrainTestlist" / name))):
        prepare.prepare("ucf101", ucf)
    assert not (ucf / "lists").exists()


# ----------------------------------------------------------------------------- HMDB-51
@pytest.fixture
def hmdb(tmp_path) -> Path:
    touch(
        tmp_path,
        "hmdb51/brush_hair/a_brush_hair_u_nm_np1_ba_goo_0.avi",
        "hmdb51/brush_hair/b_brush_hair_u_nm_np1_ba_goo_1.avi",
        "hmdb51/brush_hair/c_brush_hair_u_nm_np1_ba_goo_2.avi",
        "hmdb51/cartwheel/d_cartwheel_f_cm_np1_le_bad_0.avi",
        "hmdb51/cartwheel/e_cartwheel_f_cm_np1_le_bad_1.avi",
    )
    splits = tmp_path / "testTrainMulti_7030_splits"
    write(
        splits / "brush_hair_test_split1.txt",
        "a_brush_hair_u_nm_np1_ba_goo_0.avi 1 \r\n"
        "b_brush_hair_u_nm_np1_ba_goo_1.avi 2 \r\n"
        "c_brush_hair_u_nm_np1_ba_goo_2.avi 0 \r\n",
    )
    write(
        splits / "cartwheel_test_split1.txt",
        "d_cartwheel_f_cm_np1_le_bad_0.avi 2 \n"
        "e_cartwheel_f_cm_np1_le_bad_1.avi 1 \n"
        "f_cartwheel_f_cm_np1_le_bad_2.avi 1 \n",
    )  # not on disk
    # Another split's file must be ignored.
    write(splits / "brush_hair_test_split2.txt", "a_brush_hair_u_nm_np1_ba_goo_0.avi 2 \n")
    return tmp_path


def test_hmdb51_lists(hmdb, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    lists = prepare.prepare("hmdb51", hmdb, out)
    assert read_lines(out / "classes.txt") == ["brush_hair", "cartwheel"]
    # the authors' pool: every video that is not a test video (tags 1 and 0)
    assert read_lines(out / "lists/train.txt") == [
        "hmdb51/brush_hair/a_brush_hair_u_nm_np1_ba_goo_0.avi 0",
        "hmdb51/brush_hair/c_brush_hair_u_nm_np1_ba_goo_2.avi 0",
        "hmdb51/cartwheel/e_cartwheel_f_cm_np1_le_bad_1.avi 1",
    ]
    assert read_lines(out / "lists/val.txt") == [
        "hmdb51/brush_hair/b_brush_hair_u_nm_np1_ba_goo_1.avi 0",
        "hmdb51/cartwheel/d_cartwheel_f_cm_np1_le_bad_0.avi 1",
    ]
    assert lists.unused == 1 and lists.unused_in_train
    assert lists.missing == {"train": ["hmdb51/cartwheel/f_cartwheel_f_cm_np1_le_bad_2.avi"], "val": []}
    assert not (hmdb / "lists").exists(), "--out given: nothing written into the dataset root"


def test_hmdb51_official_training_list_leaves_tag_0_out(hmdb, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("out")
    assert prepare.main(["hmdb51", "--root", str(hmdb), "--out", str(out), "--hmdb51-train", "official"]) == 0
    assert read_lines(out / "lists/train.txt") == [
        "hmdb51/brush_hair/a_brush_hair_u_nm_np1_ba_goo_0.avi 0",
        "hmdb51/cartwheel/e_cartwheel_f_cm_np1_le_bad_1.avi 1",
    ]
    assert "1 annotated videos belong to neither split (tag 0) and are left out" in capsys.readouterr().out
    assert prepare.main(["hmdb51", "--root", str(hmdb), "--out", str(out)]) == 0
    assert "1 videos tagged 0" in capsys.readouterr().out and len(read_lines(out / "lists/train.txt")) == 3


def test_hmdb51_class_without_split_file_names_the_expected_path(hmdb):
    touch(hmdb, "hmdb51/chew/g_chew_h_nm_np1_fr_goo_0.avi")
    expected = hmdb / "testTrainMulti_7030_splits" / "chew_test_split1.txt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(expected))):
        prepare.read_hmdb51(hmdb)


def test_hmdb51_missing_split_folder_names_its_path(tmp_path):
    touch(tmp_path, "hmdb51/chew/g_chew_h_nm_np1_fr_goo_0.avi")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "testTrainMulti_7030_splits"))):
        prepare.read_hmdb51(tmp_path)


# ----------------------------------------------------------------------------- Kinetics-400
@pytest.fixture
def kinetics(tmp_path) -> Path:
    write(
        tmp_path / "annotations/train.csv",
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        "abseiling,--abc123xyz,20,30,train,0\n"
        '"air drumming",-def456uvw,5,15,train,0\n'
        "air drumming,ghi789rst_,100,110,train,0\n"  # not on disk
        "zumba,jkl000aaa11,0,10,train,0\n",
    )
    write(
        tmp_path / "annotations/validate.csv",
        "label,youtube_id,time_start,time_end,split\r\n"
        "zumba,val0000001a,3,13,val\r\n"
        "abseiling,val0000002b,7,17,val\r\n",
    )
    touch(
        tmp_path,
        "train/abseiling/--abc123xyz_000020_000030.mp4",
        "train/air_drumming/-def456uvw_000005_000015.mkv",
        "train/zumba/jkl000aaa11_000000_000010.webm",
        "train/zumba/jkl000aaa11_000000_000010.mp4",  # two formats of one clip: mp4 is taken
        "val/zumba/val0000001a_000003_000013.mp4",
        "val/abseiling/val0000002b_000007_000017.mp4",
    )
    return tmp_path


def test_kinetics400_lists(kinetics):
    lists = prepare.prepare("kinetics400", kinetics)
    # Labels keep their spaces in classes.txt; the folders (and so the paths) use underscores.
    assert read_lines(kinetics / "classes.txt") == ["abseiling", "air drumming", "zumba"]
    assert read_lines(kinetics / "lists/train.txt") == [
        "train/abseiling/--abc123xyz_000020_000030.mp4 0",
        "train/air_drumming/-def456uvw_000005_000015.mkv 1",
        "train/zumba/jkl000aaa11_000000_000010.mp4 2",
    ]
    assert read_lines(kinetics / "lists/val.txt") == [
        "val/zumba/val0000001a_000003_000013.mp4 2",
        "val/abseiling/val0000002b_000007_000017.mp4 0",
    ]
    assert lists.missing == {"train": ["train/air_drumming/ghi789rst__000100_000110.mp4"], "val": []}


def test_kinetics400_folders_with_spaces_must_be_renamed(kinetics):
    (kinetics / "train/air_drumming").rename(kinetics / "train/air drumming")
    with pytest.raises(ValueError, match=r"spaces.*'train/air drumming'.*[Rr]ename"):
        prepare.read_kinetics400(kinetics)


def test_kinetics400_missing_annotation_names_its_path(kinetics, capsys):
    (kinetics / "annotations/validate.csv").unlink()
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(["kinetics400", "--root", str(kinetics)])
    assert exit_info.value.code == 1
    assert str(kinetics / "annotations/validate.csv") in capsys.readouterr().err


def test_cli_reports_counts_and_missing_videos(kinetics, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("lists")
    assert prepare.main(["kinetics400", "--root", str(kinetics), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 classes, 3 train and 2 val videos" in printed
    assert "train: 1 annotated videos missing on disk" in printed
    assert "train/air_drumming/ghi789rst__000100_000110.mp4" in printed
    assert (out / "lists/train.txt").is_file() and not (kinetics / "lists").exists()
