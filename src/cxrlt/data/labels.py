"""Label sets of the CXR-LT competitions, in file and submission order, and their training counts."""

LABELS_2023 = [
    "Atelectasis", "Calcification of the Aorta", "Cardiomegaly", "Consolidation", "Edema",
    "Emphysema", "Enlarged Cardiomediastinum", "Fibrosis", "Fracture", "Hernia", "Infiltration",
    "Lung Lesion", "Lung Opacity", "Mass", "No Finding", "Nodule", "Pleural Effusion",
    "Pleural Other", "Pleural Thickening", "Pneumomediastinum", "Pneumonia", "Pneumoperitoneum",
    "Pneumothorax", "Subcutaneous Emphysema", "Support Devices", "Tortuous Aorta",
]
# Training-set positives of the 2023 release (N = 264,849 images), same order.
COUNTS_2023 = [
    67597, 4361, 76900, 16038, 38574, 4255, 30119, 1158, 11883, 4049, 10218, 2533, 79931, 5529,
    41869, 7663, 69240, 675, 3369, 788, 48093, 543, 14983, 2453, 89140, 3499,
]
N_TRAIN_2023 = 264849

# CXR-LT 2024 task 1: 40 findings, alphabetical.
LABELS_2024 = [
    "Adenopathy", "Atelectasis", "Azygos Lobe", "Calcification of the Aorta", "Cardiomegaly",
    "Clavicle Fracture", "Consolidation", "Edema", "Emphysema", "Enlarged Cardiomediastinum",
    "Fibrosis", "Fissure", "Fracture", "Granuloma", "Hernia", "Hydropneumothorax", "Infarction",
    "Infiltration", "Kyphosis", "Lobar Atelectasis", "Lung Lesion", "Lung Opacity", "Mass",
    "Nodule", "Normal", "Pleural Effusion", "Pleural Other", "Pleural Thickening",
    "Pneumomediastinum", "Pneumonia", "Pneumoperitoneum", "Pneumothorax", "Pulmonary Embolism",
    "Pulmonary Hypertension", "Rib Fracture", "Round(ed) Atelectasis", "Subcutaneous Emphysema",
    "Support Devices", "Tortuous Aorta", "Tuberculosis",
]
# CXR-LT 2024 task 2: the 2023 set with "No Finding" renamed "Normal" (same position).
LABELS_2024_TASK2 = ["Normal" if x == "No Finding" else x for x in LABELS_2023]

# CXR-LT 2026 (PadChest): 30 findings, names and order as released.
LABELS_2026 = [
    "Normal", "aortic elongation", "cardiomegaly", "pleural effusion", "Nodule", "atelectasis",
    "pleural thickening", "aortic atheromatosis", "Support Devices", "alveolar pattern",
    "fracture", "Hernia", "Emphysema", "azygos lobe", "Hydropneumothorax", "Kyphosis", "Mass",
    "Pneumothorax", "Subcutaneous Emphysema", "pneumoperitoneo", "vascular hilar enlargement",
    "vertebral degenerative changes", "hyperinflated lung", "interstitial pattern",
    "central venous catheter", "hypoexpansion", "bronchiectasis", "hemidiaphragm elevation",
    "sternotomy", "calcified densities",
]

# Zero-shot findings, no training labels, in submission order: CXR-LT 2024 task 3 (MIMIC-CXR test
# images) and CXR-LT 2026 task 2 (the 2026 PadChest test images).
ZERO_SHOT_2024_TASK3 = ["Bulla", "Cardiomyopathy", "Hilum", "Osteopenia", "Scoliosis"]
ZERO_SHOT_2026_TASK2 = ["Scoliosis", "Osteopenia", "Bulla", "Infarction", "Adenopathy", "Goiter"]
# The single-label long-tail benchmark (Holste et al., MICCAI DALI 2022), label columns in
# file order: NIH-CXR-LT (20 classes, ChestX-ray14's 14 + 5 new findings + No Finding) and MIMIC-CXR-LT
# (19 classes), as in github.com/VITA-Group/LongTailCXR labels/*.csv.
LABELS_NIH_CXR_LT = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
    "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax", "Pneumoperitoneum",
    "Pneumomediastinum", "Subcutaneous Emphysema", "Tortuous Aorta", "Calcification of the Aorta", "No Finding",
]
LABELS_MIMIC_CXR_LT = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices", "Pneumoperitoneum", "Pneumomediastinum", "Subcutaneous Emphysema",
    "Tortuous Aorta", "Calcification of the Aorta",
]
# The synthetic single-label demo: findings the demo phantom draws distinctly (data/demo.py), most
# frequent first.
LABELS_DEMO_SINGLE = [
    "No Finding", "Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Support Devices", "Atelectasis",
    "Nodule", "Fracture", "Mass", "Pneumoperitoneum",
]

assert len(LABELS_2023) == len(COUNTS_2023) == 26
assert len(LABELS_NIH_CXR_LT) == 20 and len(LABELS_MIMIC_CXR_LT) == 19
assert len(LABELS_2024) == 40 and len(LABELS_2024_TASK2) == 26 and len(LABELS_2026) == 30

