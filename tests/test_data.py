"""Dataset readers on small files written here: every format, split handling, and each error naming file and line."""
import json

import pytest

from model.data import CaptionDataset, DatasetFormatError, ImageCaptions, load_dataset


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path) -> str:
    with pytest.raises(DatasetFormatError) as info:
        load_dataset(path)
    return str(info.value)


def kaggle(root, *rows, header="image,caption"):
    (root / "Images").mkdir(parents=True, exist_ok=True)
    return write(root / "captions.txt", "\n".join([header, *rows]) + "\n")


def splits(root, train=None, dev=None, test=None):
    for kind, names in (("train", train), ("dev", dev), ("test", test)):
        if names is not None:
            write(root / f"Flickr_8k.{kind}Images.txt", "".join(f"{name}\n" for name in names))


# Flickr8k, Kaggle layout


def test_kaggle_csv_reads_commas_quotes_and_multiline_captions(tmp_path):
    kaggle(
        tmp_path,
        "a.jpg,A dog runs.",
        'a.jpg,"A dog, brown, runs on ""grass""."',
        'b.jpg,"Two cats\non a mat"',
        "b.jpg,A cat, unquoted, on a mat",  # unquoted commas: the fields are joined back
    )
    dataset = load_dataset(tmp_path)
    assert isinstance(dataset, CaptionDataset)
    assert dataset.name == "Flickr8k" and dataset.root == tmp_path
    assert "people, children and dogs" in dataset.domain
    assert dataset.items == [
        ImageCaptions(tmp_path / "Images" / "a.jpg", ("A dog runs.", 'A dog, brown, runs on "grass".'), "test"),
        ImageCaptions(tmp_path / "Images" / "b.jpg", ("Two cats\non a mat", "A cat, unquoted, on a mat"), "test"),
    ]


def test_path_may_be_relative_or_the_captions_file(tmp_path, monkeypatch):
    kaggle(tmp_path / "flickr", "a.jpg,one")
    monkeypatch.chdir(tmp_path)
    [item] = load_dataset("flickr").items
    assert item.image_path == tmp_path / "flickr" / "Images" / "a.jpg" and item.image_path.is_absolute()
    assert load_dataset(tmp_path / "flickr" / "captions.txt").items == [item]


def test_byte_order_mark_before_the_header_is_accepted(tmp_path):
    (tmp_path / "captions.txt").write_bytes("\ufeffimage,caption\na.jpg,one\n".encode())
    assert load_dataset(tmp_path).items[0].captions == ("one",)


@pytest.mark.parametrize("header", ["file,text", "image", "image,caption,extra"])
def test_kaggle_wrong_header(tmp_path, header):
    file = kaggle(tmp_path, "a.jpg,one", header=header)
    assert error_of(tmp_path).startswith(f"{file}:1: expected the header 'image,caption'")


def test_kaggle_empty_file(tmp_path):
    file = write(tmp_path / "captions.txt", "")
    assert error_of(tmp_path).startswith(f"{file}:1: expected the header 'image,caption'")


@pytest.mark.parametrize(
    "row, problem",
    [
        ("a.jpg", "missing caption"),
        (",a caption", "missing image name"),
        ("a.jpg,", "empty caption"),
        ('a.jpg,"  "', "empty caption"),
    ],
)
def test_kaggle_malformed_row_names_its_line(tmp_path, row, problem):
    # Line 6: the blank line and both lines of the quoted caption before it count.
    file = kaggle(tmp_path, "ok.jpg,fine", "", 'ok.jpg,"two\nlines"', row)
    assert error_of(tmp_path).startswith(f"{file}:6: {problem}")


def test_header_only_is_an_empty_dataset(tmp_path):
    file = kaggle(tmp_path)
    assert error_of(tmp_path) == f"{file}: no captioned images"


# Flickr8k split files (shared by both layouts)


def test_split_files_assign_splits_and_leave_out_unlisted_images(tmp_path):
    kaggle(tmp_path, "a.jpg,one", "b.jpg,two", "c.jpg,three", "d.jpg,four")
    splits(tmp_path, train=["a.jpg", "", "b.jpg"], dev=["c.jpg"], test=[])
    dataset = load_dataset(tmp_path)
    assert [i.image_path.name for i in dataset.split("train")] == ["a.jpg", "b.jpg"]
    assert [i.image_path.name for i in dataset.split("val")] == ["c.jpg"]
    assert dataset.split("test") == []
    assert "d.jpg" not in {i.image_path.name for i in dataset.items}


def test_only_some_split_files_present(tmp_path):
    kaggle(tmp_path, "a.jpg,one", "b.jpg,two")
    splits(tmp_path, train=["a.jpg"])
    dataset = load_dataset(tmp_path)
    assert [(i.image_path.name, i.split) for i in dataset.items] == [("a.jpg", "train")]
    assert dataset.why_empty("test") == (f"split 'test' of {tmp_path} is empty: {tmp_path / 'Flickr_8k.testImages.txt'} "
                                         "does not exist (splits present: train)")
    assert "devImages.txt does not exist" in dataset.why_empty("val")


def test_split_file_naming_an_image_without_captions(tmp_path):
    kaggle(tmp_path, "a.jpg,one")
    splits(tmp_path, test=["a.jpg", "missing.jpg"])
    assert error_of(tmp_path) == f"{tmp_path / 'Flickr_8k.testImages.txt'}:2: image 'missing.jpg' has no captions"


def test_image_in_two_splits(tmp_path):
    kaggle(tmp_path, "a.jpg,one", "b.jpg,two")
    splits(tmp_path, train=["a.jpg"], test=["b.jpg", "a.jpg"])
    assert error_of(tmp_path) == f"{tmp_path / 'Flickr_8k.testImages.txt'}:2: image 'a.jpg' is already in the train split"


def test_split_files_listing_nothing_is_an_empty_dataset(tmp_path):
    file = kaggle(tmp_path, "a.jpg,one")
    splits(tmp_path, train=[], dev=[], test=[])
    assert error_of(tmp_path) == f"{file}: no captioned images"


def test_unknown_split_name_is_refused(tmp_path):
    kaggle(tmp_path, "a.jpg,one")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_dataset(tmp_path).split("dev")


# Flickr8k, original layout


def test_original_token_file(tmp_path):
    write(
        tmp_path / "Flickr8k.token.txt",
        'x.jpg#0\tA girl climbs.\r\nx.jpg#1\tA child, on "stairs".\n\ny.jpg#0\tA dog \n',
    )
    (tmp_path / "Flicker8k_Dataset").mkdir()
    (tmp_path / "Images").mkdir()  # the original folder name wins
    splits(tmp_path, train=["x.jpg"], test=["y.jpg"])
    dataset = load_dataset(tmp_path)
    assert dataset.split("train") == [
        ImageCaptions(tmp_path / "Flicker8k_Dataset" / "x.jpg", ("A girl climbs.", 'A child, on "stairs".'), "train")
    ]
    assert dataset.split("test") == [ImageCaptions(tmp_path / "Flicker8k_Dataset" / "y.jpg", ("A dog",), "test")]


def test_token_file_with_images_folder_and_no_split_files(tmp_path):
    write(tmp_path / "Flickr8k.token.txt", "x.jpg#0\tA girl.\n")
    (tmp_path / "Images").mkdir()
    assert load_dataset(tmp_path).items == [ImageCaptions(tmp_path / "Images" / "x.jpg", ("A girl.",), "test")]


@pytest.mark.parametrize(
    "line, problem",
    [
        ("x.jpg a caption without a tab", "expected 'image.jpg#N<TAB>caption'"),
        ("x.jpg\tno caption number", "expected 'image.jpg#N<TAB>caption'"),
        ("x.jpg#a\tnot a number", "expected 'image.jpg#N<TAB>caption'"),
        ("x.jpg#1\t   ", "empty caption"),
    ],
)
def test_token_file_bad_line(tmp_path, line, problem):
    file = write(tmp_path / "Flickr8k.token.txt", f"x.jpg#0\tfine\n\n{line}\n")
    assert error_of(tmp_path).startswith(f"{file}:3: {problem}")


def test_captions_that_are_not_utf8(tmp_path):
    (tmp_path / "Flickr8k.token.txt").write_bytes(b"x.jpg#0\tcaf\xe9\n")
    assert error_of(tmp_path).startswith(f"{tmp_path / 'Flickr8k.token.txt'}: not UTF-8 text")


# COCO


def coco_file(path, images=None, annotations=None):
    data = {
        "info": {},
        "images": images or [{"id": 2, "file_name": "COCO_2.jpg"}, {"id": 1, "file_name": "COCO_1.jpg"}],
        "annotations": annotations
        if annotations is not None
        else [
            {"id": 10, "image_id": 1, "caption": "A bus, red."},
            {"id": 11, "image_id": 2, "caption": 'A "cat"'},
            {"id": 12, "image_id": 1, "caption": "A red bus "},
        ],
    }
    return write(path, json.dumps(data, indent=1))


def test_coco_captions_json(tmp_path):
    file = coco_file(tmp_path / "annotations" / "captions_val2014.json")
    (tmp_path / "val2014").mkdir()
    dataset = load_dataset(file)
    assert dataset.name == tmp_path.name and dataset.root == tmp_path
    assert dataset.items == [  # in the order of the images list
        ImageCaptions(tmp_path / "val2014" / "COCO_2.jpg", ('A "cat"',), "val"),
        ImageCaptions(tmp_path / "val2014" / "COCO_1.jpg", ("A bus, red.", "A red bus"), "val"),
    ]


def test_coco_folder_reads_every_annotation_file(tmp_path):
    coco_file(tmp_path / "annotations" / "captions_train2017.json")
    val = [{"image_id": 1, "caption": "A view"}]
    coco_file(tmp_path / "annotations" / "captions_val2017.json", images=[{"id": 1, "file_name": "v.jpg"}], annotations=val)
    (tmp_path / "train2017").mkdir()  # there is no val2017/: those images are looked up beside the json
    dataset = load_dataset(tmp_path)
    assert [i.image_path for i in dataset.split("train")] == [tmp_path / "train2017" / n for n in ("COCO_2.jpg", "COCO_1.jpg")]
    assert dataset.split("val") == [ImageCaptions(tmp_path / "annotations" / "v.jpg", ("A view",), "val")]


def test_coco_image_folder_beside_the_json_and_test_split(tmp_path):
    file = coco_file(tmp_path / "coco" / "captions_test2015.json")
    (tmp_path / "coco" / "test2015").mkdir()
    dataset = load_dataset(file)
    assert {i.split for i in dataset.items} == {"test"}
    assert dataset.items[0].image_path == tmp_path / "coco" / "test2015" / "COCO_2.jpg"


def test_coco_images_without_captions_are_left_out(tmp_path):
    file = coco_file(tmp_path / "captions_val2014.json", annotations=[{"image_id": 1, "caption": "A bus"}])
    assert [i.image_path.name for i in load_dataset(file).items] == ["COCO_1.jpg"]


def test_coco_split_must_show_in_the_name(tmp_path):
    file = coco_file(tmp_path / "captions_extra.json")
    assert error_of(file).startswith(f"{file}: cannot tell the split from the name")


@pytest.mark.parametrize(
    "annotations, problem",
    [
        ([{"image_id": 1, "caption": "ok"}, {"image_id": 9, "caption": "x"}], "annotations[1]: unknown image_id 9"),
        ([{"image_id": 1}], "annotations[0]: missing or malformed 'caption'"),
        ([{"caption": "x"}], "annotations[0]: missing or malformed 'image_id'"),
        ([{"image_id": 1, "caption": None}], "annotations[0]: missing or malformed 'caption'"),
        ([{"image_id": 1, "caption": " "}], "annotations[0]: empty caption"),
        (["not an object"], "annotations[0]: missing or malformed 'image_id'"),
        ([], "no captioned images"),
    ],
)
def test_coco_bad_annotation(tmp_path, annotations, problem):
    file = coco_file(tmp_path / "captions_train2017.json", annotations=annotations)
    assert error_of(file) == f"{file}: {problem}"


@pytest.mark.parametrize(
    "data, problem",
    [
        ({"annotations": []}, "missing or malformed 'images'"),
        ({"images": [], "annotations": {}}, "missing or malformed 'annotations'"),
        ({"images": [{"id": 1}], "annotations": []}, "images[0]: missing or malformed 'file_name'"),
        ([], "expected a JSON object at the top level"),
    ],
)
def test_coco_missing_keys(tmp_path, data, problem):
    file = write(tmp_path / "captions_train2017.json", json.dumps(data))
    assert error_of(file) == f"{file}: {problem}"


def test_invalid_json_names_file_and_line(tmp_path):
    file = write(tmp_path / "annotations" / "captions_train2014.json", '{\n"images": [\n,]\n}')
    assert error_of(tmp_path).startswith(f"{file}:3: invalid JSON")


# Karpathy splits


def karpathy_file(path, images, dataset="flickr8k"):
    return write(path, json.dumps({"dataset": dataset, "images": images} if dataset else {"images": images}))


def image(filename, split, *raws, **extra):
    return {"filename": filename, "split": split, "sentences": [{"raw": r, "tokens": r.split()} for r in raws], **extra}


def test_karpathy_images_folder(tmp_path):
    images = [
        image("a.jpg", "train", "A dog, running.", 'A "dog"'),
        image("b.jpg", "restval", "A cat"),
        image("c.jpg", "val", "A cow"),
        image("d.jpg", "test", "A hen"),
    ]
    karpathy_file(tmp_path / "dataset_flickr8k.json", images)
    write(tmp_path / "Images" / "a.jpg", "")  # only the first image decides the layout
    dataset = load_dataset(tmp_path)
    assert dataset.name == "flickr8k" and dataset.root == tmp_path
    assert dataset.domain.startswith("Trained on Flickr8k")
    assert dataset.split("train") == [
        ImageCaptions(tmp_path / "Images" / "a.jpg", ("A dog, running.", 'A "dog"'), "train"),
        ImageCaptions(tmp_path / "Images" / "b.jpg", ("A cat",), "train"),
    ]
    assert [i.image_path.name for i in dataset.split("val")] == ["c.jpg"]
    assert dataset.split("test")[0].captions == ("A hen",)


def test_karpathy_filepath_layout(tmp_path):
    images = [image("a.jpg", "train", "A bus", filepath="train2014"), image("b.jpg", "val", "A car", filepath="val2014")]
    file = karpathy_file(tmp_path / "dataset_coco.json", images, dataset="coco")
    write(tmp_path / "train2014" / "a.jpg", "")
    assert [i.image_path for i in load_dataset(file).items] == [tmp_path / "train2014" / "a.jpg", tmp_path / "val2014" / "b.jpg"]


def test_karpathy_images_beside_the_json(tmp_path):
    file = karpathy_file(tmp_path / "dataset_x.json", [image("a.jpg", "test", "A")], dataset=None)
    write(tmp_path / "a.jpg", "")
    dataset = load_dataset(file)
    assert dataset.name == tmp_path.name  # no "dataset" field
    assert dataset.items[0].image_path == tmp_path / "a.jpg"


def test_karpathy_image_found_nowhere_uses_filepath(tmp_path):
    file = karpathy_file(tmp_path / "dataset_coco.json", [image("a.jpg", "test", "A", filepath="val2014")])
    assert load_dataset(file).items[0].image_path == tmp_path / "val2014" / "a.jpg"


def test_karpathy_images_without_sentences_are_left_out(tmp_path):
    file = karpathy_file(tmp_path / "dataset_x.json", [image("a.jpg", "test"), image("b.jpg", "test", "B")])
    assert [i.image_path.name for i in load_dataset(file).items] == ["b.jpg"]


@pytest.mark.parametrize(
    "images, problem",
    [
        ([image("a.jpg", "test", "A"), image("b.jpg", "holdout", "x")], "images[1] (b.jpg): unknown split 'holdout'"),
        ([{"split": "test", "sentences": []}], "images[0]: missing or malformed 'filename'"),
        ([{"filename": "a.jpg", "split": "test"}], "images[0] (a.jpg): missing or malformed 'sentences'"),
        ([image("a.jpg", "test", "A", "")], "images[0] (a.jpg) sentences[1]: empty caption"),
        (
            [{"filename": "a.jpg", "split": "test", "sentences": [{"tokens": []}]}],
            "images[0] (a.jpg) sentences[0]: missing or malformed 'raw'",
        ),
        ([image("a.jpg", "test", "A", filepath=3)], "images[0] (a.jpg): missing or malformed 'filepath'"),
        ([], "no captioned images"),
    ],
)
def test_karpathy_errors(tmp_path, images, problem):
    file = karpathy_file(tmp_path / "dataset_coco.json", images)
    assert error_of(file).startswith(f"{file}: {problem}")


def test_karpathy_invalid_json(tmp_path):
    file = write(tmp_path / "dataset_coco.json", '{"images": [\n{"filename": "a.jpg",}\n]}')
    assert error_of(tmp_path).startswith(f"{file}:2: invalid JSON")


def test_folder_with_two_karpathy_files(tmp_path):
    karpathy_file(tmp_path / "dataset_coco.json", [image("a.jpg", "test", "A")])
    karpathy_file(tmp_path / "dataset_flickr8k.json", [image("a.jpg", "test", "A")])
    assert error_of(tmp_path) == f"{tmp_path}: several Karpathy files (dataset_coco.json, dataset_flickr8k.json); pass one"


# Unknown inputs


def test_unknown_folder_lists_what_was_looked_for(tmp_path):
    write(tmp_path / "notes.txt", "hello")
    message = error_of(tmp_path)
    assert message.startswith(f"{tmp_path}: no dataset found; looked for")
    for looked_for in ("captions.txt", "Flickr8k.token.txt", "dataset_*.json", "annotations/captions_*.json"):
        assert looked_for in message


def test_unknown_file_and_missing_path(tmp_path):
    file = write(tmp_path / "labels.json", "{}")
    assert error_of(file).startswith(f"{file}: not a dataset file")
    assert error_of(tmp_path / "nope") == f"{tmp_path / 'nope'}: no such file or folder"
