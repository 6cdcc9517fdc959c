"""Layer speed: see quality_lora/_bench/layer.py (also `quality-lora bench layer`)."""
import sys

from quality_lora._bench.layer import main

sys.exit(main())
