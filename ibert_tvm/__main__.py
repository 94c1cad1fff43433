from ibert_tvm.cli import main

raise SystemExit(main())
