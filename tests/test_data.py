import json

import pytest

from model.data import DatasetFormatError, load_dataset


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def kaggle(tmp_path, rows, header="image,caption"):
    write(tmp_path / "captions.txt", "\n".join([header, *rows]) + "\n")
    (tmp_path / "Images").mkdir(exist_ok=True)
    return tmp_path


def test_kaggle_csv_with_commas_and_quotes(tmp_path):
    kaggle(tmp_path, ['a.jpg,A dog runs.', 'a.jpg,"A dog, brown, runs on ""grass""."', "b.jpg,Two cats"])
    dataset = load_dataset(tmp_path)
    assert dataset.name == tmp_path.name
    a, b = dataset.items
    assert a.image_path == tmp_path / "Images" / "a.jpg"
    assert a.captions == ("A dog runs.", 'A dog, brown, runs on "grass".')
    assert b.captions == ("Two cats",)
    assert {item.split for item in dataset.items} == {"test"}  # no split files: everything is test


def test_split_files_assign_splits_and_drop_unlisted_images(tmp_path):
    kaggle(tmp_path, ["a.jpg,one", "b.jpg,two", "c.jpg,three", "d.jpg,four"])
    write(tmp_path / "Flickr_8k.trainImages.txt", "a.jpg\nb.jpg\n")
    write(tmp_path / "Flickr_8k.devImages.txt", "c.jpg\n")
    write(tmp_path / "Flickr_8k.testImages.txt", "\n")
    dataset = load_dataset(tmp_path)
    assert [i.image_path.name for i in dataset.split("train")] == ["a.jpg", "b.jpg"]
    assert [i.image_path.name for i in dataset.split("val")] == ["c.jpg"]
    assert dataset.split("test") == []
    assert "d.jpg" not in {i.image_path.name for i in dataset.items}


def test_split_file_naming_an_image_without_captions(tmp_path):
    kaggle(tmp_path, ["a.jpg,one"])
    split_file = write(tmp_path / "Flickr_8k.testImages.txt", "a.jpg\nmissing.jpg\n")
    with pytest.raises(DatasetFormatError, match=rf"{split_file}:2: image 'missing.jpg' has no captions"):
        load_dataset(tmp_path)


def test_kaggle_wrong_header(tmp_path):
    kaggle(tmp_path, ["a.jpg,one"], header="file,text")
    with pytest.raises(DatasetFormatError, match=r"captions.txt:1: expected the header"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("row", ["a.jpg", "a.jpg,", ",a caption", "a.jpg,   "])
def test_kaggle_malformed_row_names_its_line(tmp_path, row):
    kaggle(tmp_path, ["ok.jpg,fine", row])
    with pytest.raises(DatasetFormatError, match=r"captions.txt:3: expected 'image,caption'"):
        load_dataset(tmp_path)


def test_original_token_file(tmp_path):
    write(tmp_path / "Flickr8k.token.txt", "x.jpg#0\tA girl climbs.\nx.jpg#1\tA child, on stairs.\ny.jpg#0\tA dog\n")
    (tmp_path / "Flicker8k_Dataset").mkdir()
    write(tmp_path / "Flickr_8k.trainImages.txt", "x.jpg\n")
    write(tmp_path / "Flickr_8k.testImages.txt", "y.jpg\n")
    dataset = load_dataset(tmp_path)
    [x] = dataset.split("train")
    assert x.captions == ("A girl climbs.", "A child, on stairs.")
    assert x.image_path == tmp_path / "Flicker8k_Dataset" / "x.jpg"
    assert [i.image_path.name for i in dataset.split("test")] == ["y.jpg"]


def test_token_file_bad_line(tmp_path):
    write(tmp_path / "Flickr8k.token.txt", "x.jpg#0\tfine\nx.jpg a caption without a tab\n")
    with pytest.raises(DatasetFormatError, match=r"Flickr8k.token.txt:2: expected 'image.jpg#N<TAB>caption'"):
        load_dataset(tmp_path)


def coco_file(path, annotations=None):
    data = {
        "images": [{"id": 1, "file_name": "COCO_1.jpg"}, {"id": 2, "file_name": "COCO_2.jpg"}],
        "annotations": annotations
        or [{"image_id": 1, "caption": "A bus."}, {"image_id": 1, "caption": "A red bus "}, {"image_id": 2, "caption": "A cat"}],
    }
    return write(path, json.dumps(data, indent=1))


def test_coco_captions_json(tmp_path):
    file = coco_file(tmp_path / "annotations" / "captions_val2014.json")
    (tmp_path / "val2014").mkdir()
    dataset = load_dataset(file)
    assert {i.split for i in dataset.items} == {"val"}
    one = next(i for i in dataset.items if i.image_path.name == "COCO_1.jpg")
    assert one.captions == ("A bus.", "A red bus")
    assert one.image_path == tmp_path / "val2014" / "COCO_1.jpg"
    assert len(load_dataset(tmp_path).items) == 2  # the folder holding annotations/ works too


def test_coco_unknown_image_and_missing_keys(tmp_path):
    file = coco_file(tmp_path / "captions_train2017.json", [{"image_id": 9, "caption": "x"}])
    with pytest.raises(DatasetFormatError, match=r"captions_train2017.json: annotation 0 points to unknown image id 9"):
        load_dataset(file)
    write(file, json.dumps({"images": []}))
    with pytest.raises(DatasetFormatError, match=r"captions_train2017.json: not a COCO captions file"):
        load_dataset(file)


def test_invalid_json_names_file_and_line(tmp_path):
    file = write(tmp_path / "captions_train2014.json", '{\n"images": [\n,]\n}')
    with pytest.raises(DatasetFormatError, match=r"captions_train2014.json:3: invalid JSON"):
        load_dataset(file)


def test_karpathy_split_json(tmp_path):
    data = {
        "dataset": "flickr8k",
        "images": [
            {"filename": "a.jpg", "split": "train", "sentences": [{"raw": "A dog.", "tokens": ["a", "dog"]}]},
            {"filename": "b.jpg", "split": "restval", "sentences": [{"raw": "A cat", "tokens": ["a", "cat"]}]},
            {"filename": "c.jpg", "split": "test", "sentences": [{"raw": "A cow", "tokens": ["a", "cow"]}]},
        ],
    }
    write(tmp_path / "dataset_flickr8k.json", json.dumps(data))
    (tmp_path / "Images").mkdir()
    (tmp_path / "Images" / "a.jpg").write_bytes(b"")
    dataset = load_dataset(tmp_path)
    assert dataset.name == "flickr8k"
    assert [i.image_path.name for i in dataset.split("train")] == ["a.jpg", "b.jpg"]
    assert dataset.split("train")[0].image_path == tmp_path / "Images" / "a.jpg"
    assert dataset.split("test")[0].captions == ("A cow",)


def test_karpathy_unknown_split(tmp_path):
    data = {"images": [{"filename": "a.jpg", "split": "holdout", "sentences": [{"raw": "x"}]}]}
    file = write(tmp_path / "dataset_coco.json", json.dumps(data))
    with pytest.raises(DatasetFormatError, match=r"dataset_coco.json: image 0 \(a.jpg\) has unknown split 'holdout'"):
        load_dataset(file)


def test_unknown_folder_and_missing_path(tmp_path):
    with pytest.raises(DatasetFormatError, match="no dataset found; looked for captions.txt"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetFormatError, match="no such file or folder"):
        load_dataset(tmp_path / "nope")


def test_empty_dataset(tmp_path):
    kaggle(tmp_path, [])
    with pytest.raises(DatasetFormatError, match="no captions"):
        load_dataset(tmp_path)
