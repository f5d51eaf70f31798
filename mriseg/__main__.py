from mriseg.cli import main

raise SystemExit(main())
