from quality_lora._bench.model import main
raise SystemExit(main())
