from quality_lora._bench.data import main
raise SystemExit(main())
