from vikhr.cli import main

raise SystemExit(main())
