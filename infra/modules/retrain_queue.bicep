// The retraining queue and lock, in the function's own storage account: Event Grid puts each blob-created event on
// the queue (event_grid.bicep) and returns; the retraining function takes the messages one at a time and decides
// under a lease on one blob of the lock container (infra/retrain_function/retrain_handler.py), so an upload of
// several files, or a redelivered event, gives one run. See infra/README.md.

@description('Short name shared by every resource of this deployment (lowercase letters and digits).')
param baseName string

@description('Name of the function\'s own storage account (function_storage.bicep).')
param functionStorageName string

var queueName = 'retrain-events'
var lockContainerName = 'retrain-lock'

resource storageAccount 'Microsoft.Storage/storageAccounts@2024-01-01' existing = {
  name: functionStorageName
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2024-01-01' = {
  parent: storageAccount
  name: 'default'
}

resource queue 'Microsoft.Storage/storageAccounts/queueServices/queues@2024-01-01' = {
  parent: queueService
  name: queueName
  properties: {
    metadata: {
      purpose: '${baseName}: blob-created events on the training data, for the retraining function'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2024-01-01' existing = {
  parent: storageAccount
  name: 'default'
}

resource lockContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' = {
  parent: blobService
  name: lockContainerName
  properties: {
    publicAccess: 'None'
  }
}

output id string = queue.id
output queueName string = queue.name
output lockContainerName string = lockContainer.name
