"""Training data: synthetic ColorShape, LLaVA instruction triplets, caption files (their images
checked when read), grouped instruction batches and rule-based hard negatives."""

from focalserve_training.data.captions import CaptionDataset, CaptionRecord, read_caption_jsonl
from focalserve_training.data.checks import MissingImagesError
from focalserve_training.data.colorshape import (
    COLOR_NAMES,
    COLORS,
    RELATIONS,
    SHAPES,
    ColorShapeCaptions,
    ColorShapeGenerator,
    ColorShapeInstructions,
    ColorShapeSample,
    SceneObject,
    TwoObjectCaptions,
    TwoObjectScene,
    answer,
    caption,
)
from focalserve_training.data.hard_negatives import (
    BigramShuffle,
    HardNegativeGenerator,
    HardNegativeStrategy,
    ReplaceWord,
    SwapSameType,
    rule_based_generator,
)
from focalserve_training.data.images import ImageLoader, load_rgb
from focalserve_training.data.instructions import (
    PROMPT_SUFFIXES,
    InstructionTriplet,
    InstructionTripletDataset,
    read_llava_triplets,
    strip_image_token,
    strip_prompt_suffix,
)
from focalserve_training.data.phrasings import (
    HELD_OUT_PHRASINGS,
    BatchPhrasings,
    sample_training_phrasings,
    training_phrasings,
)
from focalserve_training.data.sampler import GroupedInstructionBatchSampler
from focalserve_training.data.word_groups import (
    COLORSHAPE_ANTONYMS,
    COLORSHAPE_WORD_GROUPS,
    ENGLISH_ANTONYMS,
    ENGLISH_WORD_GROUPS,
    Antonyms,
    PhraseMatcher,
    WordGroups,
)

__all__ = [
    "HELD_OUT_PHRASINGS",
    "COLORS",
    "COLOR_NAMES",
    "COLORSHAPE_ANTONYMS",
    "COLORSHAPE_WORD_GROUPS",
    "ENGLISH_ANTONYMS",
    "ENGLISH_WORD_GROUPS",
    "PROMPT_SUFFIXES",
    "RELATIONS",
    "SHAPES",
    "Antonyms",
    "BatchPhrasings",
    "BigramShuffle",
    "CaptionDataset",
    "CaptionRecord",
    "ColorShapeCaptions",
    "ColorShapeGenerator",
    "ColorShapeInstructions",
    "ColorShapeSample",
    "GroupedInstructionBatchSampler",
    "HardNegativeGenerator",
    "HardNegativeStrategy",
    "ImageLoader",
    "InstructionTriplet",
    "InstructionTripletDataset",
    "MissingImagesError",
    "PhraseMatcher",
    "ReplaceWord",
    "SceneObject",
    "SwapSameType",
    "TwoObjectCaptions",
    "TwoObjectScene",
    "WordGroups",
    "answer",
    "caption",
    "load_rgb",
    "read_caption_jsonl",
    "read_llava_triplets",
    "rule_based_generator",
    "sample_training_phrasings",
    "training_phrasings",
    "strip_image_token",
    "strip_prompt_suffix",
]
