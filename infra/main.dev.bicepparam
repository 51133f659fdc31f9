// Dev environment. Deploy with:
//   az deployment group create --resource-group rg-chatft-dev --template-file infra/main.bicep --parameters infra/main.dev.bicepparam
using './main.bicep'

param baseName = 'chatftdev'

param location = 'eastus2'

param tags = {
  project: 'chatft'
  environment: 'dev'
}
