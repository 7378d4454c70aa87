from prompt_ot.cli import main

raise SystemExit(main())
