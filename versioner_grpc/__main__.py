from versioner_grpc.cli import main

raise SystemExit(main())
