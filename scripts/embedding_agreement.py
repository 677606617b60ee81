#!/usr/bin/env python3
"""How closely student sentence embeddings follow the teacher's, on the same texts.

    embedding_agreement.py TEACHER.jsonl STUDENT.jsonl [MORE_STUDENTS.jsonl...]

Each file is `slimformer embed` output (one {"text", "embedding"} per line, same
texts in the same order). Prints one JSON object: per student, the mean cosine of
its embedding of each text to the teacher's, and how often both pick the same
nearest neighbour (by cosine, the text itself excluded) among all the texts.
Pure Python (numpy is used when present).
"""
import json
import math
import sys


def load(path):
    rows = [json.loads(l) for l in open(path, encoding="utf-8")]
    return [r["text"] for r in rows], [r["embedding"] for r in rows]


def normalize(vs):
    out = []
    for v in vs:
        n = math.sqrt(sum(x * x for x in v)) or 1.0
        out.append([x / n for x in v])
    return out


def nearest(vs):
    try:
        import numpy as np

        m = np.array(vs)
        sims = m @ m.T
        np.fill_diagonal(sims, -np.inf)
        return sims.argmax(axis=1).tolist()
    except ImportError:
        best = []
        for i, a in enumerate(vs):
            top, arg = -2.0, -1
            for j, b in enumerate(vs):
                if i != j:
                    s = sum(x * y for x, y in zip(a, b))
                    if s > top:
                        top, arg = s, j
            best.append(arg)
        return best


def main():
    texts, teacher = load(sys.argv[1])
    teacher = normalize(teacher)
    t_nn = nearest(teacher)
    report = {"texts": len(texts), "teacher": sys.argv[1], "students": {}}
    for path in sys.argv[2:]:
        s_texts, student = load(path)
        if s_texts != texts:
            sys.exit(f"{path}: not the same texts as {sys.argv[1]}")
        student = normalize(student)
        cos = [sum(x * y for x, y in zip(a, b)) for a, b in zip(teacher, student)]
        s_nn = nearest(student)
        report["students"][path] = {
            "mean_cosine": sum(cos) / len(cos),
            "same_nearest_neighbour": sum(a == b for a, b in zip(t_nn, s_nn)) / len(texts),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
