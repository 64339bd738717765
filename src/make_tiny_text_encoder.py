"""Write a tiny BERT with RANDOM weights as a text-encoder folder, for the offline demo of text class
queries and zero-shot findings (experiments/demo_zero_shot.yaml) on a machine without a real
biomedical encoder. It is NOT a language model: its label embeddings carry no meaning, so zero-shot
scores from it should sit at chance. With internet, download a real encoder once instead (README).

    python src/make_tiny_text_encoder.py [input/text_encoders/tiny_random_bert] [--seed 0]
"""
import argparse

from cxrlt.cli import run_stage
from cxrlt.data.labels import LABELS_2023, LABELS_2024, LABELS_2026, ZERO_SHOT_2024_TASK3, ZERO_SHOT_2026_TASK2
from cxrlt.fileio import display_path, project_path
from cxrlt.models.text import write_random_bert


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", default="input/text_encoders/tiny_random_bert", help="folder to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    a = p.parse_args()
    words = ["chest x-ray showing {label}", *LABELS_2023, *LABELS_2024, *LABELS_2026, *ZERO_SHOT_2024_TASK3,
             *ZERO_SHOT_2026_TASK2]
    out = write_random_bert(project_path(a.out), words, seed=a.seed)
    print(f"wrote {display_path(out)}: a tiny BERT with random weights (vocabulary: the CXR-LT label words); "
          f"set model.text_encoder={display_path(out)}")


if __name__ == "__main__":
    run_stage(main)
