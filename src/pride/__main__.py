from pride.cli import main

raise SystemExit(main())
