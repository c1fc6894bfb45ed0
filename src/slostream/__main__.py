from slostream.cli import main

raise SystemExit(main())
