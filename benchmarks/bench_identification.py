"""TinyFace-size identification time and peak memory: quality_lora/evaluation/scale_check.py."""
import sys

from quality_lora.evaluation.scale_check import main

sys.exit(main())
