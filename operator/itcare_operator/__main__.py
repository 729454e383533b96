from itcare_operator.cli import main

raise SystemExit(main())
